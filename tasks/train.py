"""Prefect task: training. Not retried by Prefect: a rerun of the flow resumes the run from its latest
checkpoint (and Ray Train itself replaces failed workers within `max_failures`).

While it trains, a thread here keeps a progress artifact at the share of the steps done, read from the run's
metrics.jsonl: the library writes that file and knows nothing of Prefect."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading

from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from neox.pipeline.layout import MLFLOW_RUN_FILE, TRAIN_METRICS_FILE
from neox.train.config import TrainConfig
from neox.train.launch import train_or_resume
from neox.train.runs import plan_run
from neox.train.storage import RunStorage

POLL_S = 10.0


@task(name="train", cache_policy=NO_CACHE)
def train(cfg: TrainConfig, tokenized: str) -> str:
    cfg = dataclasses.replace(cfg, data=tokenized)
    plan = plan_run(cfg)
    stop = threading.Event()
    # created here, in the task's own thread, where Prefect knows which task run it belongs to
    artifact = create_progress_artifact(0.0, key="train-progress", description=f"training steps of {cfg.train_iters}")
    watcher = threading.Thread(target=watch, args=(plan.storage, cfg.train_iters, artifact, stop), daemon=True)
    watcher.start()
    try:
        run, outcome = train_or_resume(cfg, plan)
    finally:
        stop.set()
        watcher.join()
    get_run_logger().info("train: %s %s", outcome, run)
    report(plan.storage, cfg, outcome)
    return run


def steps_done(storage: RunStorage) -> int:
    """The last step metrics.jsonl records (0 before the first)."""
    lines = (storage.read_text(TRAIN_METRICS_FILE) or "").splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, ValueError):
            continue  # a line torn by a crash mid-write
    return 0


def watch(storage: RunStorage, total: int, artifact, stop: threading.Event) -> None:
    """Keep the progress artifact at steps done / train_iters until `stop`, and once more at the end. Best
    effort: a failed update (the Prefect API busy) waits for the next."""
    while True:
        stopping = stop.wait(POLL_S)
        with contextlib.suppress(Exception):
            update_progress_artifact(artifact, 100.0 * steps_done(storage) / total)
        if stopping:
            return


def report(storage: RunStorage, cfg: TrainConfig, outcome: str) -> None:
    """The loss curve (every tenth of the steps) as a table, and a link to the MLflow run with its plot."""
    records = [json.loads(line) for line in (storage.read_text(TRAIN_METRICS_FILE) or "").splitlines()]
    every = max(1, len(records) // 10)
    shown = [r for r in records if r["step"] in (1, len(records)) or r["step"] % every == 0]
    table = "\n".join(f"| {r['step']} | {r['loss']:.4f} | {r['lr']:.3g} |" for r in shown)
    run_id = (storage.read_text(MLFLOW_RUN_FILE) or "").strip()
    create_markdown_artifact(
        f"**{outcome}** `{storage.uri}`\n\nMLflow run `{run_id}` (its artifact `training.png` plots loss, learning "
        f"rate and gradient norm)\n\n| step | loss | lr |\n| --- | --- | --- |\n{table}\n",
        key="train",
        description=f"training loss curve ({outcome})",
    )
    if cfg.tracking_uri.startswith(("http://", "https://")) and run_id:
        experiment = MlflowClient(tracking_uri=cfg.tracking_uri).get_run(run_id).info.experiment_id
        create_link_artifact(
            f"{cfg.tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}",
            link_text="the training run in MLflow",
            key="train-mlflow",
        )
