"""Prefect task: decide what a retrain runs on (the champion to continue from, the shards that arrived since)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from neox.pipeline.configfile import read_pipeline_config
from neox.pipeline.retrain import Champion, champion_lineage, retrain_config, retrain_data
from neox.registry.mlflow_registry import champion_version
from tasks.register import registry_settings


@task(name="plan-retrain", cache_policy=NO_CACHE)
def plan_retrain(config: str) -> tuple[dict[str, Any] | None, Champion | None]:
    """(the data section to run, the champion continued from); the data is None when nothing is new."""
    raw = read_pipeline_config(config)
    cfg, work_root = retrain_config(raw.get("retrain")), raw.get("work_root", "work")
    _, name, tracking = registry_settings(config)
    version = champion_version(name, tracking)
    champion = champion_lineage(version, work_root) if version is not None and cfg.mode == "continue" else None
    data = retrain_data(raw["data"], cfg, work_root, champion)
    start = f"continue from {name} v{champion.version}" if champion else "train from scratch"
    shards = (
        "no shard arrived since it was trained"
        if data is None
        else "\n".join(f"- `{s}`" for s in data.get("sources") or [])
    )
    create_markdown_artifact(
        f"**retrain ({cfg.mode})**: {start}\n\n{shards}\n", key="retrain-plan", description="what the retrain runs on"
    )
    get_run_logger().info("retrain: %s; %s", start, "nothing new" if data is None else f"data {data}")
    return data, champion
