"""Prefect task: exact + near-duplicate (MinHash LSH) dedup of the downloaded shards."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from neox.data.prepare import DataConfig, dedup_stage
from tasks.report import report_stage


@task(name="dedup", cache_policy=NO_CACHE)
def dedup(downloaded: str, data: DataConfig, work_root: str) -> str:
    started = time.time()
    out = dedup_stage(downloaded, data, work_root)
    report_stage("dedup", out, started)
    return str(out)
