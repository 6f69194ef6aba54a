"""Flow `evaluate_and_promote`: lm-eval on a checkpoint, register it in MLflow, score the current champion on
the same held-out data, and run the promotion gate on the two."""

from __future__ import annotations

from prefect import flow

from flows.naming import run_name
from neox.pipeline.config import load_pipeline_config
from tasks.evaluate import evaluate, score_champion, scoring
from tasks.register import promote_version, register_model


@flow(name="evaluate_and_promote", flow_run_name=run_name("evaluate_and_promote"))
def evaluate_and_promote(config: str, checkpoint: str, tokenized: str) -> dict:
    cfg = load_pipeline_config(config)
    scored, registry, tracking = scoring(cfg), cfg.registry, cfg.train.tracking_uri
    evaluated = evaluate(checkpoint, tokenized, scored).result()
    version = register_model(evaluated, registry, tracking, cfg.work_root, cfg.train.mlflow_experiment)
    champion = score_champion(version, tokenized, registry, scored)
    decision = promote_version(version, registry, tracking, champion)
    return {"eval": evaluated, "version": version, "promoted": decision.promote, "reasons": list(decision.reasons)}
