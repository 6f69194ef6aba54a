"""Prefect task: decide what a retrain runs on (the champion to continue from, the shards that arrived since)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from neox.data.prepare import DataConfig, data_config
from neox.pipeline.configfile import as_mapping
from neox.pipeline.retrain import Champion, RetrainConfig, champion_lineage, retrain_data
from neox.registry.mlflow_registry import champion_version
from neox.registry.rule import RegistryConfig


@task(name="plan-retrain", cache_policy=NO_CACHE)
def plan_retrain(
    cfg: RetrainConfig, data: DataConfig, registry: RegistryConfig, tracking_uri: str, work_root: str
) -> tuple[DataConfig | None, Champion | None]:
    """(the data section to run, the champion continued from); the data is None when nothing is new."""
    name = registry.name
    version = champion_version(name, tracking_uri)
    champion = champion_lineage(version, work_root) if version is not None and cfg.mode == "continue" else None
    new = retrain_data(as_mapping(data), cfg, work_root, champion)
    data = None if new is None else data_config(new)
    start = f"continue from {name} v{champion.version}" if champion else "train from scratch"
    shards = "no shard arrived since it was trained" if data is None else "\n".join(f"- `{s}`" for s in data.sources)
    create_markdown_artifact(
        f"**retrain ({cfg.mode})**: {start}\n\n{shards}\n", key="retrain-plan", description="what the retrain runs on"
    )
    get_run_logger().info("retrain: %s; %s", start, "nothing new" if data is None else f"data {data}")
    return data, champion
