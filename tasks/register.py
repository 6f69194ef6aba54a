"""Prefect tasks: register the evaluated checkpoint in MLflow, and run the promotion gate."""

from __future__ import annotations

from mlflow import MlflowClient
from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from neox.registry.mlflow_registry import promote, register
from neox.registry.rule import Decision, RegistryConfig


@task(name="register", cache_policy=NO_CACHE)
def register_model(
    eval_output: str,
    registry: RegistryConfig,
    tracking_uri: str,
    work_root: str,
    experiment: str,
    lineage: dict[str, str] | None = None,
) -> str:
    """`lineage`: tags beside those the checkpoint's run gives (a fine-tune's base model)."""
    tags = {"neox.prefect_flow_run_id": str(runtime.flow_run.id), **(lineage or {})}
    version = register(eval_output, registry.name, tracking_uri, work_root, experiment, tags=tags)
    get_run_logger().info("registered %s version %s", registry.name, version)
    return version


@task(name="promote", cache_policy=NO_CACHE)
def promote_version(
    version: str,
    registry: RegistryConfig,
    tracking_uri: str,
    champion_metrics: dict[str, float] | None = None,
    baseline: tuple[str, dict[str, float]] | None = None,
) -> Decision:
    name = registry.name
    decision = promote(name, version, registry.rule, tracking_uri, champion_metrics, baseline)
    verdict = "champion" if decision.promote else "not promoted"
    # the decision as promote wrote it on the version; a version promoted before it wrote one has only the verdict
    description = MlflowClient(tracking_uri=tracking_uri).get_model_version(name, version).description
    markdown = description or f"### {name} version {version}: {verdict}\n\n- " + "\n- ".join(decision.reasons)
    create_markdown_artifact(markdown, key="promotion", description="promotion gate decision")
    get_run_logger().info("%s version %s: %s (%s)", name, version, verdict, "; ".join(decision.reasons))
    return decision
