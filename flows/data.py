"""Flow `data_prep`: download -> dedup -> tokenizer -> tokenize, from a pipeline config's `data:` section.
Every stage reuses its verified output, so a rerun does only what is missing."""

from __future__ import annotations

from prefect import flow

from neox.pipeline.configfile import read_pipeline_config
from tasks.dedup import dedup
from tasks.download import download
from tasks.tokenize import tokenize
from tasks.tokenizer import train_tokenizer


@flow(name="data_prep")
def data_prep(config: str = "configs/pipeline/local.yaml", data: dict | None = None) -> str:
    """`data`: a data section to run instead of the config's (the retrain flow's new shards)."""
    raw = read_pipeline_config(config)
    data, work_root = data or raw["data"], str(raw.get("work_root", "work"))
    deduped = dedup(download(data, work_root), data, work_root)
    return tokenize(deduped, train_tokenizer(deduped, data, work_root), data, work_root)
