"""Prefect task: training. Not retried by Prefect: a rerun of the flow resumes the run from its latest
checkpoint (and Ray Train itself replaces failed workers within `max_failures`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from neox.pipeline.layout import TRAIN_METRICS_FILE
from neox.train.config import TrainConfig
from neox.train.launch import train_or_resume


@task(name="train", cache_policy=NO_CACHE)
def train(cfg: TrainConfig, tokenized: str) -> str:
    run, outcome = train_or_resume(dataclasses.replace(cfg, data=tokenized))
    get_run_logger().info("train: %s %s", outcome, run)
    if "://" not in run:
        records = [json.loads(line) for line in (Path(run) / TRAIN_METRICS_FILE).read_text().splitlines()]
        steps = [r for r in records if r["step"] in (1, len(records)) or r["step"] % max(1, len(records) // 10) == 0]
        table = "\n".join(f"| {r['step']} | {r['loss']:.4f} | {r['lr']:.3g} |" for r in steps)
        create_markdown_artifact(
            f"**{outcome}** `{run}`\n\n| step | loss | lr |\n| --- | --- | --- |\n{table}\n",
            key="train",
            description=f"training loss curve ({outcome})",
        )
    return run
