"""Prefect tasks: register the evaluated checkpoint in MLflow, and run the promotion gate."""

from __future__ import annotations

import json

from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from neox.pipeline.configfile import read_pipeline_config
from neox.registry.mlflow_registry import DECISION_TAG, promote, register
from neox.registry.rule import Decision, promotion_rule
from neox.train.config import load_train_config
from neox.train.tracking import absolute_tracking_uri


def registry_settings(config: str) -> tuple[dict, str, str]:
    """The config's registry section, registered model name and (absolute) MLflow tracking URI."""
    cfg = load_train_config(config)
    section = read_pipeline_config(config).get("registry") or {}
    return section, section.get("name", "neox-tiny"), absolute_tracking_uri(cfg.mlflow_tracking_uri)


@task(name="register", cache_policy=NO_CACHE)
def register_model(config: str, eval_output: str) -> str:
    _, name, tracking = registry_settings(config)
    version = register(
        eval_output,
        name,
        tracking,
        read_pipeline_config(config).get("work_root", "work"),
        tags={"neox.prefect_flow_run_id": str(runtime.flow_run.id)},
    )
    get_run_logger().info("registered %s version %s", name, version)
    return version


@task(name="promote", cache_policy=NO_CACHE)
def promote_version(config: str, version: str, champion_metrics: dict[str, float] | None = None) -> Decision:
    section, name, tracking = registry_settings(config)
    decision = promote(name, version, promotion_rule(section.get("rule")), tracking, champion_metrics)
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=tracking).get_model_version(name, version).tags
    record = json.loads(tags.get(DECISION_TAG, "{}"))
    verdict = "champion" if decision.promote else "not promoted"
    create_markdown_artifact(
        f"**{name} v{version}: {verdict}** — {'; '.join(decision.reasons)}\n\n"
        f"candidate metrics: `{json.dumps(record.get('candidate_metrics'))}`\n\n"
        f"champion (v{record.get('champion_version')}) metrics on {record.get('champion_scored_on')}: "
        f"`{json.dumps(record.get('champion_metrics'))}`\n",
        key="promotion",
        description="promotion gate decision",
    )
    get_run_logger().info("%s version %s: %s (%s)", name, version, verdict, "; ".join(decision.reasons))
    return decision
