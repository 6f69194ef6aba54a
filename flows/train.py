"""Flow `train`: train (or resume, or reuse a finished run) on a tokenized dataset."""

from __future__ import annotations

from prefect import flow

from flows.naming import run_name
from neox.pipeline.config import load_pipeline_config
from neox.train.config import load_train_config
from tasks.train import train as train_task


@flow(name="train", flow_run_name=run_name("train"))
def train(config: str, tokenized: str, overrides: dict | None = None) -> str:
    """`overrides`: train-section keys replaced for this run (the retrain flow's name, init_from, schedule)."""
    hours = load_pipeline_config(config).timeouts.train_hours
    return train_task(load_train_config(config, overrides), tokenized, hours)
