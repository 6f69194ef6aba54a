"""Prefect task: the download stage (the sample corpus or the configured sources, fetched and checksummed)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from neox.data.prepare import DataConfig, download_stage
from tasks.deadline import within
from tasks.report import STAGE_TASK, stage_state


# no Prefect retries: the stage retries transient faults itself, resuming each file (neox.runtime.retry)
@task(name="download", cache_policy=NO_CACHE, **STAGE_TASK)
def download(data: DataConfig, work_root: str, hours: float) -> State:
    return stage_state("download", within("download", hours, lambda: download_stage(data, work_root)))
