"""Prefect task: tokenize the deduplicated shards into GPT-NeoX's .bin/.idx."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from neox.data.prepare import DataConfig, tokenize_stage
from tasks.deadline import within
from tasks.report import STAGE_TASK, stage_state


@task(name="tokenize", cache_policy=NO_CACHE, **STAGE_TASK)
def tokenize(deduped: str, tokenizer: str, data: DataConfig, work_root: str, hours: float) -> State:
    result = within("tokenize", hours, lambda: tokenize_stage(deduped, tokenizer, data, work_root))
    return stage_state("tokenize", result)
