"""Shared by the integration tests: one tokenized dataset and one straight 30-step training run (real Ray
Train + DeepSpeed), which the resume, recovery, evaluation and registry tests compare against or build on."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from neox.pipeline.atomic import file_lock
from tests.conftest import NEOX, REPO

STEPS = 30
SPLIT = "900,50,50"  # leaves ~15 held-out documents of the small corpus for the eval tests


def once_for_all_workers(tmp_path_factory, worker_id: str, name: str, build: Callable[[], Path]) -> Path:
    """`build()` once per test session, by whichever pytest-xdist worker asks first; the others wait for it and
    get its path. (A session fixture is otherwise built by every worker: the straight run took a minute each.)"""
    if worker_id == "master":  # not under xdist: one process
        return build()
    shared = tmp_path_factory.getbasetemp().parent  # this session's, above each worker's own folder
    with file_lock(shared / f"{name}.lock"):
        built = shared / f"{name}.path"
        if not built.exists():
            built.write_text(str(build()))
        return Path(built.read_text())


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory, worker_id, ray_local, small_corpus, corpus_tokenizer) -> Path:
    from neox.data.tokenize import tokenize_shards

    def build() -> Path:
        return tokenize_shards(small_corpus, corpus_tokenizer, tmp_path_factory.mktemp("work")).path

    return once_for_all_workers(tmp_path_factory, worker_id, "tokenized", build)


def write_config(directory: Path, tokenized: Path, **train) -> Path:
    section = {
        "model": str(REPO / "configs" / "model" / "tiny.yml"),
        "data": str(tokenized),
        "name": "run",
        "split": SPLIT,
        "storage_path": str(directory / "storage"),
        "seq_length": 64,
        "micro_batch_size": 4,
        "train_iters": STEPS,
        "lr": 2.0e-3,
        "min_lr": 2.0e-4,
        "warmup": 0.1,
        "zero_stage": 1,
        "log_interval": 5,
        "eval_interval": 10,
        "eval_iters": 2,
        "checkpoint_interval": 10,
        "num_workers": 2,
        "mlflow_tracking_uri": f"sqlite:///{directory / 'mlflow.db'}",
        **train,
    }
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"train": section}))
    return path


def launch(config: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [NEOX, "train", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-5000:]
    return out


def planned_run(config: Path):
    """The run a config trains (its key and storage), known before it starts."""
    from neox.train.config import load_train_config
    from neox.train.runs import plan_run

    return plan_run(load_train_config(config))


def run_folder(config: Path) -> Path:
    return Path(planned_run(config).storage.uri)


@pytest.fixture(scope="session")
def straight(tmp_path_factory, worker_id, tokenized) -> Path:
    """30 steps of ZeRO-1, 2 workers, uninterrupted: the reference run (tests that continue it work on a copy)."""

    def build() -> Path:
        directory = tmp_path_factory.mktemp("straight")
        config = write_config(directory, tokenized)
        out = finish(launch(config, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}))  # samples in a short run
        assert str(run_folder(config)) in out.splitlines()  # neox train prints the run's folder
        return run_folder(config)

    return once_for_all_workers(tmp_path_factory, worker_id, "straight", build)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start_ports() -> list[str]:
    """`ray start` arguments for the ports it would otherwise take from fixed defaults (workers from 10002 up, the
    head's client server 10001): `make test` runs two test files at once, and two nodes of different clusters on
    those ports crash each other's raylet."""
    return ["--min-worker-port=0", "--max-worker-port=0", f"--ray-client-server-port={free_port()}"]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until `url` answers 200, failing early if the server process that should answer it has died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(0.5)
