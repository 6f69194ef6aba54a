"""The MLflow pyfunc a registered version is: prompts in, greedy continuations out, from our checkpoint with its
KV cache. `mlflow.pyfunc.load_model("models:/NAME@champion").predict([...])` runs it offline wherever
neox-pipeline is installed."""

from __future__ import annotations

from typing import Any

import mlflow


class TextGenerator(mlflow.pyfunc.PythonModel):
    """A list of prompts in, their greedy continuations out (params: max_new_tokens). Its `predict` has no type
    hints on purpose: with them MLflow ignores the explicit signature and its params."""

    def load_context(self, context) -> None:
        from neox.data.tokenizer import eod_id, load_tokenizer
        from neox.model.checkpoint import load_model, tokenizer_path

        self.model = load_model(context.artifacts["model"])
        self.tokenizer = load_tokenizer(tokenizer_path(context.artifacts["model"]))
        self.eod = eod_id(self.tokenizer)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        # untyped on purpose: MLflow ignores the explicit signature (and its params) of a type-hinted predict
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
