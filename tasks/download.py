"""Prefect task: the download stage (the sample corpus or the configured sources, fetched and checksummed)."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from neox.data.prepare import DataConfig, download_stage
from tasks.report import report_stage


# retried: a download resumes from its partial file, so a retry after a dropped connection loses nothing
@task(name="download", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def download(data: DataConfig, work_root: str) -> str:
    started = time.time()
    out = download_stage(data, work_root)
    report_stage("download", out, started)
    return str(out)
