"""Prefect task: exact + near-duplicate (MinHash LSH) dedup of the downloaded shards."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from neox.data.prepare import data_config, dedup_stage
from tasks.report import report_stage


@task(name="dedup", cache_policy=NO_CACHE)
def dedup(downloaded: str, data: dict[str, Any], work_root: str) -> str:
    started = time.time()
    out = dedup_stage(downloaded, data_config(data), work_root)
    report_stage("dedup", out, started)
    return str(out)
