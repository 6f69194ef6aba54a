"""The MLflow pyfunc a registered version is: prompts in, continuations out, from our checkpoint with its KV cache.
`mlflow.pyfunc.load_model("models:/NAME@champion").predict([...], params={...})` runs it offline; `neox serve`
puts it behind MLflow's scoring server.

Params (each optional): max_new_tokens (32), temperature (0: greedy), top_k (0: off), top_p (1: off), seed (-1:
unseeded), stop (strings that end a continuation, not included) and chat (true: a model fine-tuned on chats, whose
checkpoint carries its chat template, gets each prompt as a user turn rendered with it; false: as is). A bad value,
or a max_new_tokens that leaves no room for a prompt in the model's context, is an MLflow invalid-parameter error
(HTTP 400 when served); a prompt longer than the room left keeps its last tokens. Prompts of equal token length are
generated as one batch (the KV cache has no padding mask, so unequal ones are not mixed).

Registration logs this file as MLflow "model from code" (it ends with `set_model`), not a pickled object, with the
`neox` package as its code: loading a version runs this source, never an unpickled one, and needs only the
packages in its requirements."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import mlflow

from neox.pipeline.layout import CHAT_TEMPLATE_FILE
from neox.registry.pyfunc_params import PARAMS

ADVICE = "Add type hints to the `predict` method"
BATCH = 16  # prompts generated at once


def without_type_hint_advice(show):
    """MLflow asks for type hints on `predict` when a PythonModel class is defined; with them, logging a model runs
    `predict` on the input example, which would load the weights (41 GB for GPT-NeoX-20B) where registering runs.
    Its own decorator forces that warning on ("once"), so a filter cannot drop it: this drops it where it shows."""

    def shown(message, category, filename, lineno, file=None, line=None):
        if ADVICE not in str(message):
            show(message, category, filename, lineno, file, line)

    return shown


def cut_at_stop(text: str, stops: list[str]) -> str:
    """`text` up to the first stop string in it."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text


warnings.showwarning, _show = without_type_hint_advice(warnings.showwarning), warnings.showwarning
try:

    class TextGenerator(mlflow.pyfunc.PythonModel):
        """A list of prompts in, their continuations out (params: see the module's docstring)."""

        def load_context(self, context) -> None:
            from neox.data.tokenizer import eod_id, load_tokenizer
            from neox.model.checkpoint import load_model, tokenizer_path

            self.model = load_model(context.artifacts["model"])
            self.tokenizer = load_tokenizer(tokenizer_path(context.artifacts["model"]))
            self.eod = eod_id(self.tokenizer)
            template = Path(context.artifacts["model"]) / CHAT_TEMPLATE_FILE
            self.render = None
            if template.exists():  # fine-tuned on chats: a prompt becomes a user turn, as in training
                from neox.data.chat import chat_renderer

                self.render = chat_renderer(tokenizer_path(context.artifacts["model"]), template.read_text())

        def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
            import torch

            from neox.model.generate import generate

            prompts = model_input.iloc[:, 0].tolist() if hasattr(model_input, "iloc") else list(model_input)
            params = {**PARAMS, **(params or {})}
            sampling, stops, seed = self.sampling(params)
            if self.render is not None and params["chat"]:
                prompts = [self.render([{"role": "user", "content": str(prompt)}], True) for prompt in prompts]
            room = self.model.cfg.max_position_embeddings - sampling.max_new_tokens
            encoded = [(self.tokenizer.encode(str(prompt)).ids or [self.eod])[-room:] for prompt in prompts]
            generator = None if seed < 0 else torch.Generator().manual_seed(seed)
            by_length = defaultdict(list)
            for i, ids in enumerate(encoded):
                by_length[len(ids)].append(i)
            out: list[str] = [""] * len(prompts)
            for length, rows in sorted(by_length.items()):
                for start in range(0, len(rows), BATCH):
                    batch = rows[start : start + BATCH]
                    tokens = generate(self.model, torch.tensor([encoded[i] for i in batch]), sampling, generator)
                    for row, i in enumerate(batch):
                        out[i] = cut_at_stop(self.tokenizer.decode(tokens[row, length:].tolist()), stops)
            return out

        def sampling(self, params: dict[str, Any]):
            """The generation settings from the request's params, or MLflow's invalid-parameter error."""
            from mlflow.exceptions import MlflowException

            from neox.errors import ConfigError
            from neox.model.generate import SamplingConfig

            context = self.model.cfg.max_position_embeddings
            try:
                sampling = SamplingConfig(
                    max_new_tokens=int(params["max_new_tokens"]),
                    temperature=float(params["temperature"]),
                    top_k=int(params["top_k"]),
                    top_p=float(params["top_p"]),
                    eos_token_id=self.eod,
                )
                if sampling.max_new_tokens >= context:
                    raise ConfigError(
                        f"max_new_tokens {sampling.max_new_tokens} leaves no room for a prompt in the model's "
                        f"context of {context} tokens"
                    )
                stops = params["stop"] if isinstance(params["stop"], (list, tuple)) else [params["stop"]]
                return sampling, [str(s) for s in stops if s], int(params["seed"])
            except (ConfigError, TypeError, ValueError) as err:
                raise MlflowException.invalid_parameter_value(str(err)) from None

    mlflow.models.set_model(TextGenerator())
finally:
    warnings.showwarning = _show
