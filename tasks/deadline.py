"""The pipeline config's `timeouts:` for the stage tasks.

Not Prefect's `timeout_seconds`: in the flow's main thread that is a SIGALRM, and a blocking `ray.get` (training,
the Ray data stages, an eval on a GPU node) holds the alarm's error back until it returns, so a hung run would
never time out. Here the stage runs in a thread the task waits on; at the deadline the driver leaves Ray, which
ends the Ray job's actors and tasks (a training run's checkpoints stay, for a rerun to resume from)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Pending
from typing import TypeVar

import ray

T = TypeVar("T")


def within(stage: str, hours: float, work: Callable[[], T]) -> T:
    """work(), or a TimeoutError once it has run `hours`, timeouts.<stage>_hours (Prefect marks the task run
    TimedOut). A stage off Ray (a download) may go on in its thread until the process ends: it publishes whole
    or not at all."""
    pool = ThreadPoolExecutor(1, thread_name_prefix=stage)
    future = pool.submit(contextvars.copy_context().run, work)  # Prefect's run context: its logger, artifacts
    try:
        return future.result(timeout=hours * 3600)
    except Pending:
        if ray.is_initialized():
            ray.shutdown()
        raise TimeoutError(f"{stage} ran past its timeout: timeouts.{stage}_hours is {hours:g}") from None
    finally:
        pool.shutdown(wait=False)
