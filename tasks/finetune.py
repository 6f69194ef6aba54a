"""Prefect tasks of the finetune flow: the base model resolved to a checkpoint, the instruction data tokenized with
its tokenizer, and the base scored on the fine-tune's held-out data (what the gate compares a first fine-tune with)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from neox.data.instructions import InstructionsConfig, instructions_stage
from neox.pipeline.finetune import Base, resolve_base
from neox.pipeline.layout import TOKENIZER_FILE
from tasks.deadline import within
from tasks.evaluate import Scoring, scored_on
from tasks.report import STAGE_TASK, stage_state


@task(name="base-model", cache_policy=NO_CACHE)
def base_model(base: str, work_root: str, tracking_uri: str) -> Base:
    resolved = resolve_base(base, work_root, tracking_uri)
    get_run_logger().info("fine-tuning %s (checkpoint %s)", resolved.uri, resolved.checkpoint)
    return resolved


@task(name="instructions", cache_policy=NO_CACHE, **STAGE_TASK)
def instructions(cfg: InstructionsConfig, base: Base, work_root: str, hours: float) -> State:
    tokenizer = base.checkpoint / TOKENIZER_FILE
    return stage_state(
        "instructions", within("instructions", hours, lambda: instructions_stage(cfg, tokenizer, work_root))
    )


@task(name="score-base", cache_policy=NO_CACHE)
def score_base(base: Base, tokenized: str, scoring: Scoring) -> dict[str, float]:
    """The base model's metrics on the fine-tune's held-out data (its eval is content-addressed: reused when done)."""
    metrics = scored_on(base.checkpoint, tokenized, scoring)
    get_run_logger().info("base %s on the fine-tune's eval data: %s", base.uri, metrics)
    return metrics
