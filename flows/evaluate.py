"""Flow `evaluate_and_promote`: lm-eval on a checkpoint, register it in MLflow, score the current champion on
the same held-out data, and run the promotion gate on the two."""

from __future__ import annotations

from prefect import flow

from tasks.evaluate import evaluate, score_champion
from tasks.register import promote_version, register_model


@flow(name="evaluate_and_promote")
def evaluate_and_promote(config: str, checkpoint: str, tokenized: str) -> dict:
    evaluated = evaluate(config, checkpoint, tokenized)
    version = register_model(config, evaluated)
    decision = promote_version(config, version, score_champion(config, version, tokenized))
    return {"eval": evaluated, "version": version, "promoted": decision.promote, "reasons": list(decision.reasons)}
