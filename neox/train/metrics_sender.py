"""Rank 0's metrics on their way to MLflow, sent from a thread of their own so that training never waits on (or
dies with) the tracking server: a batch the server does not take is kept and sent again, in order, once it
answers; what is still unsent when training ends is reported as lost. Every step is in metrics.jsonl either way.

Our own queue and thread rather than MLflow's `synchronous=False` logging: that one drops a batch whose retries
fail, and says so only in a log line."""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from typing import Any

RETRY_S = 5.0  # between attempts at a batch the server did not take (MLflow's client retries within each)


class MetricsSender:
    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id
        self.pending: queue.Queue = queue.Queue()
        self.in_flight: list | None = None
        self.deadline = math.inf  # set by close
        self.closing = threading.Event()
        self.failures = 0
        self.dropped = 0
        self.last_error = ""
        self.thread = threading.Thread(target=self._send_all, name="mlflow-metrics", daemon=True)
        self.thread.start()

    def send(self, metrics: list) -> None:
        """Queue a batch of `mlflow.entities.Metric` for the run."""
        self.pending.put(metrics)

    def _send_all(self) -> None:
        while True:
            try:
                self.in_flight = self.pending.get(timeout=0.2)
            except queue.Empty:
                if self.closing.is_set():
                    return
                continue
            while not self._sent(self.in_flight):
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    return
                time.sleep(min(RETRY_S, remaining))
            self.in_flight = None

    def _sent(self, batch: list) -> bool:
        """Whether the batch is done with: sent, or refused for good (then counted as dropped)."""
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as err:  # any failure to reach the server or to be accepted by it
            self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            if refused_for_good(err):  # sending it again cannot help; later batches must not wait behind it
                self.dropped += 1
                print(f"MLflow: metrics refused ({self.last_error}); dropped", file=sys.stderr, flush=True)
                return True
            if not self.failures:
                print(
                    f"MLflow: metrics not sent ({self.last_error}); training goes on, and they are sent when the "
                    "server answers",
                    file=sys.stderr,
                    flush=True,
                )
            self.failures += 1
            return False
        if self.failures:
            print("MLflow: the tracking server answers again; catching up", file=sys.stderr, flush=True)
            self.failures = 0
        return True

    def close(self, drain_s: float = 60.0) -> int:
        """Wait up to `drain_s` for the queued batches to be sent; returns how many were not (lost to MLflow)."""
        self.deadline = time.monotonic() + drain_s
        self.closing.set()
        self.thread.join(drain_s + 1)
        return self.dropped + self.pending.qsize() + (self.in_flight is not None)


def refused_for_good(err: Exception) -> bool:
    """An answer from the server that a retry would get again: a 4xx other than 429 (a deleted run, a bad value,
    credentials no longer valid)."""
    status = getattr(err, "get_http_status_code", lambda: None)()
    return status is not None and 400 <= status < 500 and status != 429
