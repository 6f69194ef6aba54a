"""What a training run records: its MLflow run (opened by the driver with the resolved config as params, continued
on resume) and rank 0's per-step metrics (metrics.jsonl in the run folder, the console and MLflow)."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from neox.model.config import ModelConfig
from neox.pipeline.layout import MLFLOW_RUN_FILE, TRAIN_METRICS_FILE
from neox.pipeline.stage import read_manifest
from neox.runtime.run_context import source_tags
from neox.runtime.tracking_uri import get_or_create_experiment
from neox.train.config import TrainConfig
from neox.train.flops import gpu_peak_tflops, per_gpu_rates
from neox.train.metrics_sender import MetricsSender
from neox.train.storage import RunStorage


def open_mlflow_run(cfg: TrainConfig, storage: RunStorage, params: dict[str, Any], resume: bool) -> str:
    """The run's MLflow run id: a new run with the resolved config as params, or on resume the run it began."""
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    marker = storage.read_text(MLFLOW_RUN_FILE)
    if resume and marker:
        run_id = marker.strip()
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except MlflowException:  # the run lives in another tracking store: start a new MLflow run
            pass
    run = client.create_run(
        get_or_create_experiment(client, cfg.mlflow_experiment),
        run_name=cfg.name,
        tags={**source_tags(), "neox.stage": "train"},
    )
    flat = {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v) for k, v in params.items()}
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in sorted(flat.items())])
    client.log_inputs(run.info.run_id, datasets=dataset_inputs(cfg))
    storage.write_text(run.info.run_id, MLFLOW_RUN_FILE)
    return run.info.run_id


def dataset_inputs(cfg: TrainConfig) -> list:
    """The tokenized datasets the run reads, as MLflow dataset inputs (the run page's "Datasets used"): named and
    digested by their tokenize stage key, the folder as source, documents, tokens and blend weight as profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for path, weight in zip(cfg.datasets, cfg.weights, strict=True):
        manifest = read_manifest(path)
        stats = manifest["stats"]
        profile = {"documents": stats.get("documents"), "tokens": stats.get("tokens"), "weight": weight}
        dataset = Dataset(
            name=f"tokenize/{manifest['key']}",
            digest=manifest["key"],
            source_type="local",
            source=json.dumps({"uri": str(Path(path).resolve())}),
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")]))
    return inputs


def logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line torn by a crash mid-write."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return math.inf


class Tracker:
    """Rank 0's metrics: a line per step in metrics.jsonl, the console and MLflow every log_interval steps (sent
    by a `MetricsSender`, so an MLflow outage neither stops nor slows training).

    metrics.jsonl holds each step of the history behind the current weights once: a run restored from a
    checkpoint drops the lines logged after it (by the attempt that died) before continuing. For a run on object
    storage the file is kept locally and published at each checkpoint and at the end."""

    def __init__(self, config: dict[str, Any], cfg: TrainConfig, mcfg: ModelConfig, world: int, start_step: int):
        from mlflow import MlflowClient

        self.cfg, self.world = cfg, world
        self.sender = MetricsSender(MlflowClient(tracking_uri=config["mlflow_tracking_uri"]), config["mlflow_run_id"])
        self.storage = config["storage"]
        self.metrics_path = self.storage.local_dir() / TRAIN_METRICS_FILE
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        earlier = (self.storage.read_text(TRAIN_METRICS_FILE) or "").splitlines()
        self.metrics_path.write_text("".join(line + "\n" for line in earlier if logged_step(line) <= start_step))
        self.metrics_file = open(self.metrics_path, "a")
        self.window: list[tuple[float, float]] = []
        self.mcfg = mcfg
        self.peak = gpu_peak_tflops() if cfg.use_gpu else None
        self.tokens_per_step = cfg.global_batch_size * cfg.seq_length

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None, scale: float, seconds: float) -> None:
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "loss_scale": scale,
            "step_time_s": seconds,
        }
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        self.window.append((loss, seconds))
        if step % self.cfg.log_interval and step != self.cfg.train_iters:
            return
        mean_time = sum(s for _, s in self.window) / len(self.window)
        metrics = {
            "train/loss": sum(loss for loss, _ in self.window) / len(self.window),
            "train/lr": lr,
            "train/loss_scale": scale,
            "train/step_time_s": mean_time,
            "train/tokens_per_s": self.tokens_per_step / mean_time,
            "train/samples_per_s": self.cfg.global_batch_size / mean_time,
        }
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        if self.peak is not None:
            shape = (self.cfg.global_batch_size, self.cfg.seq_length, self.cfg.activation_checkpointing)
            metrics |= per_gpu_rates(self.mcfg, *shape, mean_time, self.world, self.peak)
        self.window = []
        self._log(step, metrics)

    def evaluation(self, step: int, loss: float) -> None:
        self._log(step, {"valid/loss": loss, "valid/perplexity": math.exp(min(loss, 50.0))})

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.sender.send([Metric(k, float(v), now, step) for k, v in metrics.items()])
        print(f"step {step:>6} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)

    def publish(self) -> None:
        self.metrics_file.flush()
        self.storage.publish(self.metrics_path, TRAIN_METRICS_FILE)

    def close(self) -> None:
        self.metrics_file.close()
        self.storage.publish(self.metrics_path, TRAIN_METRICS_FILE)
        lost = self.sender.close()
        if lost:
            print(
                f"MLflow: {lost} metric batches could not be sent ({self.sender.last_error}); every step is in "
                f"{TRAIN_METRICS_FILE} in the run folder",
                file=sys.stderr,
                flush=True,
            )


def node_monitor(config: dict[str, Any], node_rank: int, local_rank: int):
    """MLflow's system metrics (CPU, memory, disk, network, and GPUs through nvidia-ml-py) from the node this
    worker runs on, as system/node_<N>/...: one monitor per node (its local rank 0), where the training runs rather
    than on the driver, which on a cluster is a head node without a GPU. MLflow's sampling interval (10 s;
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL in train.env) applies."""
    if local_rank != 0:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not its start, stop and GPU-less notes
    monitor = SystemMetricsMonitor(
        config["mlflow_run_id"], node_id=f"node_{node_rank}", tracking_uri=config["mlflow_tracking_uri"]
    )
    monitor.start()
    return monitor


def stop_monitor(monitor, wait_s: float = 30.0) -> None:
    """Stop a node monitor and flush its last samples, waiting `wait_s` at most: its thread may be inside MLflow's
    own HTTP retries when the server is down, and training must not wait for that."""
    if monitor is not None:
        stopping = threading.Thread(target=monitor.finish, daemon=True)
        stopping.start()
        stopping.join(wait_s)
