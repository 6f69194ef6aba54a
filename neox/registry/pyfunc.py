"""The MLflow pyfunc a registered version is: prompts in, greedy continuations out, from our checkpoint with its
KV cache. `mlflow.pyfunc.load_model("models:/NAME@champion").predict([...])` runs it offline wherever
neox-pipeline is installed.

Registration logs this file as MLflow "model from code" (it ends with `set_model`), not a pickled object: loading
a version runs this source, never an unpickled one."""

from __future__ import annotations

import warnings
from typing import Any

import mlflow

ADVICE = "Add type hints to the `predict` method"


def without_type_hint_advice(show):
    """MLflow asks for type hints on `predict` when a PythonModel class is defined; with them, logging a model runs
    `predict` on the input example, which would load the weights (41 GB for GPT-NeoX-20B) where registering runs.
    Its own decorator forces that warning on ("once"), so a filter cannot drop it: this drops it where it shows."""

    def shown(message, category, filename, lineno, file=None, line=None):
        if ADVICE not in str(message):
            show(message, category, filename, lineno, file, line)

    return shown


warnings.showwarning, _show = without_type_hint_advice(warnings.showwarning), warnings.showwarning
try:

    class TextGenerator(mlflow.pyfunc.PythonModel):
        """A list of prompts in, their greedy continuations out (params: max_new_tokens)."""

        def load_context(self, context) -> None:
            from neox.data.tokenizer import eod_id, load_tokenizer
            from neox.model.checkpoint import load_model, tokenizer_path

            self.model = load_model(context.artifacts["model"])
            self.tokenizer = load_tokenizer(tokenizer_path(context.artifacts["model"]))
            self.eod = eod_id(self.tokenizer)

        def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
            import torch

            from neox.model.generate import SamplingConfig, generate

            prompts = model_input.iloc[:, 0].tolist() if hasattr(model_input, "iloc") else list(model_input)
            limit = self.model.cfg.max_position_embeddings
            new_tokens = int((params or {}).get("max_new_tokens", 32))
            out = []
            for prompt in prompts:
                ids = (self.tokenizer.encode(prompt).ids or [self.eod])[-(limit - new_tokens) :]
                tokens = generate(
                    self.model, torch.tensor([ids]), SamplingConfig(max_new_tokens=new_tokens, eos_token_id=self.eod)
                )
                out.append(self.tokenizer.decode(tokens[0, len(ids) :].tolist()))
            return out

    mlflow.models.set_model(TextGenerator())
finally:
    warnings.showwarning = _show
