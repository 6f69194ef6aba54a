"""Prefect task: exact + near-duplicate (MinHash LSH) dedup of the downloaded shards."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from neox.data.prepare import DataConfig, dedup_stage
from tasks.deadline import within
from tasks.report import STAGE_TASK, stage_state


@task(name="dedup", cache_policy=NO_CACHE, **STAGE_TASK)
def dedup(downloaded: str, data: DataConfig, work_root: str, hours: float) -> State:
    return stage_state("dedup", within("dedup", hours, lambda: dedup_stage(downloaded, data, work_root)))
