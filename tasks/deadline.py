"""The pipeline config's `timeouts:` for the stage tasks.

Not Prefect's `timeout_seconds`: that is a SIGALRM whose error a blocking `ray.get` holds back until the call
returns, so a hung training run would never time out. Ray does honour Ctrl-C there, so at the deadline the
stage is interrupted as Ctrl-C would: SIGINT to the flow's main thread. Ray Train's handler then aborts the run
(workers stopped, checkpoints kept for a rerun to resume from), the data stages cancel their pending Ray tasks,
and a download stops at its next read. Where the process ignores SIGINT (a job started in the background from a
script does), the stage listens for it while it runs."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def within(stage: str, hours: float, work: Callable[[], T]) -> T:
    """work(), or a TimeoutError once it has run `hours`, timeouts.<stage>_hours (Prefect marks the task run
    TimedOut). Needs the main thread, where Prefect runs a task a sync flow calls directly; elsewhere work()
    runs without a deadline (a warning says so)."""
    main = threading.main_thread()
    if threading.current_thread() is not main:
        logging.getLogger(__name__).warning(
            "%s: not on the main thread, so timeouts.%s_hours is not applied", stage, stage
        )
        return work()
    expired = threading.Event()

    def interrupt() -> None:
        expired.set()
        signal.pthread_kill(main.ident, signal.SIGINT)

    late = f"{stage} ran past its timeout: timeouts.{stage}_hours is {hours:g}"
    previous = signal.getsignal(signal.SIGINT)
    # ignored (a flow a script started with `&`: bash ignores SIGINT there), the interrupt would be lost; at its
    # default, it would kill the process
    if previous in (signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(hours * 3600, interrupt)
    timer.daemon = True
    timer.start()
    try:
        result = work()
    except BaseException:  # KeyboardInterrupt, or what the interrupted stage raised on its way out
        if expired.is_set():
            raise TimeoutError(late) from None
        raise
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)  # Ray Train leaves its abort handler installed after a run
    if expired.is_set():  # the interrupt came as the stage was finishing
        raise TimeoutError(late)
    return result
