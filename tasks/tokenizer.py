"""Prefect task: train the BPE tokenizer on the deduplicated shards (or take the configured one)."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from neox.data.prepare import DataConfig, tokenizer_from_section
from tasks.report import report_stage


@task(name="train-tokenizer", cache_policy=NO_CACHE)
def train_tokenizer(deduped: str, data: DataConfig, work_root: str) -> str:
    started = time.time()
    out = tokenizer_from_section(deduped, data, work_root)
    report_stage("tokenizer", Path(out).parent, started)
    return str(out)
