"""Fault injection: the MLflow tracking server stopped while training logs to it. Training's metrics go through
`MetricsSender`, which keeps what the server does not take and sends it, in order, when the server answers again;
what is still unsent at the end is reported lost (every step stays in metrics.jsonl), never a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import neox.train.metrics_sender
from neox.train.metrics_sender import MetricsSender
from tests.integration.conftest import free_port, wait_for_http

pytestmark = pytest.mark.faults


def start_server(
    db: Path, port: int, artifacts: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """A tracking server of 2 processes on the SQLite store `db`, proxying artifacts to `artifacts` (default: beside
    `db`), with `env` added to its environment. MLflow's job runner (7 more processes, each importing mlflow) is
    nothing training or the registry uses."""
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1", "--backend-store-uri", f"sqlite:///{db}"]
        + ["--artifacts-destination", artifacts or str(db.parent)],
        env={**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_http(f"http://127.0.0.1:{port}/health", server)
    return server


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # the server and its workers
    server.wait()


def batch(step: int):
    from mlflow.entities import Metric

    return [Metric("train/loss", 10.0 - step, int(time.time() * 1000), step)]


@pytest.fixture
def quick_retries(monkeypatch):
    """Fail a request at once instead of through MLflow's minutes of backoff, and try again soon."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(neox.train.metrics_sender, "RETRY_S", 0.3)


def test_metrics_logged_while_the_server_is_down_are_sent_in_order_when_it_is_back(tmp_path, quick_retries, capfd):
    from mlflow import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path / "mlflow.db", port)
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    sender = MetricsSender(client, run_id)
    sender.send(batch(1))
    stop(server)
    started = time.monotonic()
    for step in (2, 3, 4):  # training goes on: sending never waits for the server
        sender.send(batch(step))
    assert time.monotonic() - started < 0.1
    time.sleep(1)
    server = start_server(tmp_path / "mlflow.db", port)
    try:
        assert sender.close(drain_s=60) == 0
        history = client.get_metric_history(run_id, "train/loss")
        assert [m.step for m in history] == [1, 2, 3, 4]
    finally:
        stop(server)
    err = capfd.readouterr().err
    assert "MLflow: metrics not sent" in err and "answers again; catching up" in err


def test_metrics_the_server_never_takes_are_reported_lost_without_holding_training_up(quick_retries):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    sender = MetricsSender(client, "0" * 32)
    for step in (1, 2, 3):
        sender.send(batch(step))
    started = time.monotonic()
    assert sender.close(drain_s=1) == 3
    assert time.monotonic() - started < 5 and sender.last_error


def test_metrics_the_server_refuses_for_good_are_dropped_not_retried_forever(tmp_path, capfd):
    from mlflow import MlflowClient

    sender = MetricsSender(MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"), "0" * 32)  # no such run
    for step in (1, 2):
        sender.send(batch(step))
    started = time.monotonic()
    assert sender.close(drain_s=30) == 2 and time.monotonic() - started < 10  # each answered 404 once, then dropped
    assert "MLflow: metrics refused (MlflowException: Run with id=0000" in capfd.readouterr().err
