"""Flow `data_prep`: download -> dedup -> tokenizer -> tokenize, from a pipeline config's `data:` section.
Every stage reuses its verified output, so a rerun does only what is missing."""

from __future__ import annotations

from prefect import flow

from flows.naming import run_name
from neox.data.prepare import DataConfig
from neox.errors import ConfigError
from neox.pipeline.config import load_pipeline_config
from tasks.dedup import dedup
from tasks.download import download
from tasks.tokenize import tokenize
from tasks.tokenizer import train_tokenizer


@flow(name="data_prep", flow_run_name=run_name("data_prep"))
def data_prep(config: str = "configs/pipeline/local.yaml", data: DataConfig | None = None) -> str:
    """`data`: a data section to run instead of the config's (the retrain flow's new shards)."""
    cfg = load_pipeline_config(config)
    data, work_root, hours = data or cfg.data, cfg.work_root, cfg.timeouts
    if data is None:
        raise ConfigError(f"{config} has no `data:` section to prepare")
    downloaded = download(data, work_root, hours.download_hours).result()
    deduped = dedup(downloaded, data, work_root, hours.dedup_hours).result()
    tokenizer = train_tokenizer(deduped, data, work_root, hours.tokenizer_hours).result()
    return tokenize(deduped, tokenizer, data, work_root, hours.tokenize_hours).result()
