"""Flow `evaluate_and_promote`: lm-eval on a checkpoint, register it in MLflow, run the promotion gate."""

from __future__ import annotations

from prefect import flow

from tasks.evaluate import evaluate
from tasks.register import promote_version, register_model


@flow(name="evaluate_and_promote")
def evaluate_and_promote(config: str, checkpoint: str, tokenized: str) -> dict:
    evaluated = evaluate(config, checkpoint, tokenized)
    version = register_model(config, evaluated)
    decision = promote_version(config, version)
    return {"eval": evaluated, "version": version, "promoted": decision.promote, "reasons": list(decision.reasons)}
