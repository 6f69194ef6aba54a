"""Prefect task: train the BPE tokenizer on the deduplicated shards (or take the configured one)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from neox.data.prepare import DataConfig, tokenizer_from_section
from tasks.deadline import within
from tasks.report import STAGE_TASK, stage_state


@task(name="train-tokenizer", cache_policy=NO_CACHE, **STAGE_TASK)
def train_tokenizer(deduped: str, data: DataConfig, work_root: str, hours: float) -> State:
    return stage_state(
        "tokenizer", within("tokenizer", hours, lambda: tokenizer_from_section(deduped, data, work_root))
    )
