"""`within`, the stage tasks' `timeouts:`: the stage is interrupted at its deadline and fails with a TimeoutError
that names the setting, whatever the process did with SIGINT before, and that is put back afterwards. (Through
Prefect and a stage blocked in Ray: tests/integration/test_timeouts.py.)"""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest

from tasks.deadline import within

SECONDS = 1 / 3600  # in hours, as timeouts: gives them


def stalls() -> None:
    time.sleep(60)  # the deadline interrupts it long before


@pytest.fixture
def sigint_as(request):
    """SIGINT's handler set to the test's parameter, and the test session's own handler back afterwards."""
    own = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, request.param)
    yield request.param
    signal.signal(signal.SIGINT, own)


# ignored: a flow a script started with `&` (bash ignores SIGINT there; the hang this was found by: the test suite
# itself had been started that way)
@pytest.mark.parametrize(
    "sigint_as",
    [signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL],
    indirect=True,
    ids=["python-default", "ignored", "system-default"],
)
def test_a_stage_past_its_deadline_is_interrupted_whatever_sigint_was_set_to(sigint_as):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^dedup ran past its timeout: timeouts.dedup_hours is 0.000138889$"):
        within("dedup", 0.5 * SECONDS, stalls)
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGINT) == sigint_as  # as it was before the stage


def test_a_stage_done_in_time_returns_its_result_and_leaves_sigint_alone():
    own = signal.getsignal(signal.SIGINT)
    assert within("tokenize", 1.0, lambda: 42) == 42
    assert signal.getsignal(signal.SIGINT) == own


def test_a_stage_s_own_error_is_raised_as_it_is():
    def fails() -> None:
        raise ValueError("a corrupt shard")

    with pytest.raises(ValueError, match="a corrupt shard"):
        within("dedup", 1.0, fails)


def test_off_the_main_thread_a_stage_runs_without_its_deadline_and_a_warning_says_so(caplog):
    results = []
    worker = threading.Thread(target=lambda: results.append(within("download", 0.1 * SECONDS, lambda: time.sleep(1))))
    with caplog.at_level(logging.WARNING, logger="tasks.deadline"):
        worker.start()
        worker.join()
    assert results == [None]  # ran its full second, past the 0.36 s deadline
    assert "download: not on the main thread, so timeouts.download_hours is not applied" in caplog.text
