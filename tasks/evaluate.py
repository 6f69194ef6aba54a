"""Prefect tasks: lm-eval on the final checkpoint with the offline tasks built from the held-out split, and the
current champion scored on the same data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from neox.eval.config import EvalConfig, EvalDataConfig, eval_configs
from neox.eval.data import eval_data_stage
from neox.eval.record import evaluate_and_record, verified_eval_run
from neox.eval.run import CHECKPOINT_PATH_TAG, EVAL_METRICS_FILE
from neox.pipeline.config import PipelineConfig
from neox.pipeline.layout import WEIGHTS_FILE
from neox.pipeline.stage import StageResult
from neox.registry.mlflow_registry import champion_version
from neox.registry.rule import RegistryConfig
from tasks.deadline import within
from tasks.report import STAGE_TASK, stage_state


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How a flow scores checkpoints on held-out data: the eval-data and lm-eval configs, where outputs and MLflow
    runs go, and the hours each evaluation may take."""

    heldout: EvalDataConfig
    evaluation: EvalConfig
    work_root: str
    tracking_uri: str
    experiment: str
    hours: float


def scoring(cfg: PipelineConfig) -> Scoring:
    """A pipeline config's scoring: its eval section, the held-out part of its training split."""
    heldout, evaluation = eval_configs(cfg.eval, cfg.train.split)
    train = cfg.train
    return Scoring(
        heldout, evaluation, cfg.work_root, train.tracking_uri, train.mlflow_experiment, cfg.timeouts.evaluate_hours
    )


def eval_on_heldout(checkpoint: str | Path, tokenized: str, scoring: Scoring) -> tuple[StageResult, str]:
    """Run (or reuse) the evaluation of `checkpoint` on the held-out split of `tokenized`, and its MLflow run."""
    eval_data = eval_data_stage(tokenized, scoring.work_root, scoring.heldout).path
    return evaluate_and_record(
        checkpoint, eval_data, scoring.work_root, scoring.evaluation, scoring.tracking_uri, scoring.experiment
    )


@task(name="evaluate", cache_policy=NO_CACHE, **STAGE_TASK)
def evaluate(checkpoint: str, tokenized: str, scoring: Scoring) -> State:
    result, run_id = within("evaluate", scoring.hours, lambda: eval_on_heldout(checkpoint, tokenized, scoring))
    metrics = json.loads((result.path / EVAL_METRICS_FILE).read_text())
    return stage_state("eval", result, {"mlflow_run_id": run_id, **metrics})


@task(name="score-champion", cache_policy=NO_CACHE)
def score_champion(
    candidate_version: str, tokenized: str, registry: RegistryConfig, scoring: Scoring
) -> dict[str, float] | None:
    """The current champion scored on the candidate's held-out data, so the gate compares like with like when
    the candidate was trained on other data (a retrain, a new dedup threshold). The eval stage is
    content-addressed: when the champion was scored on this very data its output is reused, not recomputed. The
    metrics come from the eval's MLflow run, its output checked against the hashes the run recorded.
    None when there is no other champion, or its checkpoint is gone (the gate then uses its recorded metrics)."""
    champion = champion_version(registry.name, scoring.tracking_uri)
    if champion is None or str(champion.version) == str(candidate_version):
        return None
    checkpoint = Path(champion.tags.get(CHECKPOINT_PATH_TAG, ""))
    if not (checkpoint / WEIGHTS_FILE).is_file():
        get_run_logger().warning(
            "champion v%s's checkpoint %s is gone: the gate uses its recorded metrics", champion.version, checkpoint
        )
        return None
    metrics = scored_on(checkpoint, tokenized, scoring)
    get_run_logger().info("champion v%s on the candidate's eval data: %s", champion.version, metrics)
    return metrics


def scored_on(checkpoint: str | Path, tokenized: str, scoring: Scoring) -> dict[str, float]:
    """Another model's metrics on the candidate's held-out data, read from its eval's MLflow run after its output
    is checked against the hashes that run recorded (the eval stage reuses an evaluation already made)."""
    result, _ = within("evaluate", scoring.hours, lambda: eval_on_heldout(checkpoint, tokenized, scoring))
    return verified_eval_run(result.path, scoring.tracking_uri, scoring.experiment).data.metrics
