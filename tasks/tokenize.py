"""Prefect task: tokenize the deduplicated shards into GPT-NeoX's .bin/.idx."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from neox.data.prepare import DataConfig, tokenize_stage
from tasks.report import report_stage


@task(name="tokenize", cache_policy=NO_CACHE)
def tokenize(deduped: str, tokenizer: str, data: DataConfig, work_root: str) -> str:
    started = time.time()
    out = tokenize_stage(deduped, tokenizer, data, work_root)
    report_stage("tokenize", out, started)
    return str(out)
