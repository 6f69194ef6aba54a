"""Flow `train`: train (or resume, or reuse a finished run) on a tokenized dataset."""

from __future__ import annotations

from prefect import flow

from tasks.train import train as train_task


@flow(name="train")
def train(config: str, tokenized: str) -> str:
    return train_task(config, tokenized)
