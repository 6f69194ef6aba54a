"""Prefect task: training. Not retried by Prefect: a rerun of the flow resumes the run from its latest
checkpoint (and Ray Train itself replaces failed workers within `max_failures`).

While it trains, a thread here keeps a progress artifact at the share of the steps done, read from the tail of
the run's metrics.jsonl: the library writes that file and knows nothing of Prefect. When it ends, the loss curve
becomes an image artifact (the PNG inline as a data URL, so it shows without access to MLflow's store)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import math
import threading

from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from neox.pipeline.layout import MLFLOW_RUN_FILE, TRAIN_METRICS_FILE
from neox.train.artifacts import training_plot
from neox.train.config import TrainConfig
from neox.train.launch import train_or_resume
from neox.train.runs import plan_run
from neox.train.storage import RunStorage
from neox.train.tracking import logged_step
from tasks.deadline import within

POLL_S = 10.0
TAIL_BYTES = 4096  # several metrics.jsonl lines: the poller never reads the whole file of a long run


@task(name="train", cache_policy=NO_CACHE)
def train(cfg: TrainConfig, tokenized: str, hours: float) -> str:
    cfg = dataclasses.replace(cfg, data=tokenized)
    plan = plan_run(cfg)
    stop = threading.Event()
    # created here, in the task's own thread, where Prefect knows which task run it belongs to
    artifact = create_progress_artifact(0.0, key="train-progress", description=f"training steps of {cfg.train_iters}")
    watcher = threading.Thread(target=watch, args=(plan.storage, cfg.train_iters, artifact, stop), daemon=True)
    watcher.start()
    try:
        run, outcome = within("train", hours, lambda: train_or_resume(cfg, plan))
    finally:
        stop.set()
        watcher.join()
    get_run_logger().info("train: %s %s", outcome, run)
    report(plan.storage, cfg, outcome)
    return run


def steps_done(storage: RunStorage) -> int:
    """The last step metrics.jsonl records (0 before the first)."""
    lines = (storage.read_tail(TAIL_BYTES, TRAIN_METRICS_FILE) or "").splitlines()
    steps = [logged_step(line) for line in lines]  # a line cut by the tail or torn by a crash: infinity
    return int(max((s for s in steps if math.isfinite(s)), default=0))


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
    """What the run was, the loss curve as an image, and (for an MLflow server) a link to the MLflow run."""
    metrics = storage.read_text(TRAIN_METRICS_FILE) or ""
    run_id = (storage.read_text(MLFLOW_RUN_FILE) or "").strip()
    create_markdown_artifact(
        f"**{outcome}** `{storage.uri}`\n\n{steps_done(storage)} of {cfg.train_iters} steps; MLflow run `{run_id}` "
        "(its artifacts: `training.png`, `metrics.jsonl`, the resolved configs)\n",
        key="train",
        description=f"training run ({outcome})",
    )
    if metrics:
        plot = png_data_url(training_plot(metrics))
        create_image_artifact(plot, key="train-loss-curve", description="loss, learning rate and gradient norm by step")
    if cfg.tracking_uri.startswith(("http://", "https://")) and run_id:
        experiment = MlflowClient(tracking_uri=cfg.tracking_uri).get_run(run_id).info.experiment_id
        create_link_artifact(
            f"{cfg.tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}",
            link_text="the training run in MLflow",
            key="train-mlflow",
        )


def png_data_url(figure) -> str:
    """The figure as a PNG data URL (about 30 KB at this size)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
