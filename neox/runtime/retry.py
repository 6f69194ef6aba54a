"""The one retry policy for network calls (HTTP, S3, the Hugging Face hub), built on tenacity.

Transient faults are retried with exponential backoff and jitter: HTTP 429 and 5xx answers, S3's throttling and
5xx errors, connection refusals and resets, and timeouts. Anything else (a 404, a 403, missing credentials, a bad
URL) fails at once. Every call carries connect and read timeouts, and a deadline bounds the whole: an endpoint that
stops sending fails once `deadline_s` passes without a byte arriving, naming the URL. The deadline counts from the
last byte rather than from the start because a 27 GB Pile shard takes far longer than any sensible timeout, and
for the same reason an attempt that brings new bytes resets the count of failed attempts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import tenacity

from neox.errors import ServiceError
from neox.pipeline.configfile import Positive, PositiveFloat, section


@section
class Retry:
    """`data.download:`: how a download rides out network faults (HTTP, S3, the Hugging Face hub)."""

    attempts: Positive = 5
    """Failed attempts in a row (ones that bring no new bytes) before a file is given up."""
    backoff_s: PositiveFloat = 1.0
    """The first wait between attempts; it doubles each time, plus up to as much again of random jitter."""
    timeout_s: PositiveFloat = 30.0
    """Seconds to connect, and for each network read."""
    deadline_s: PositiveFloat = 90.0
    """Give a file up when this many seconds pass without a byte arriving, across attempts."""


class TransientError(ServiceError):
    """A fault worth another try: an HTTP 429 or 5xx answer, a connection that broke or went silent."""


class GaveUp(ServiceError):
    """A call that kept failing until its attempts or its deadline ran out."""


def is_transient(err: BaseException) -> bool:
    """Whether a fault may go away on its own (retry it) rather than say something about the request."""
    import botocore.exceptions
    import requests

    if isinstance(err, TransientError | ConnectionError | TimeoutError):
        return True
    if isinstance(err, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError):
        return True
    if isinstance(
        err,
        botocore.exceptions.ConnectionError  # refused connections, connect timeouts
        | botocore.exceptions.HTTPClientError  # read timeouts, closed connections
        | botocore.exceptions.ResponseStreamingError,  # a body cut off mid-stream
    ):
        return True
    if isinstance(err, botocore.exceptions.ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status == 429 or status >= 500 or err.response.get("Error", {}).get("Code") in _S3_RETRYABLE
    return False


_S3_RETRYABLE = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}


class Clock:
    """A call's deadline and failure count. Any byte that arrives pushes the deadline back (`heard`); only bytes
    beyond what earlier attempts got (`progressed`) reset the count of failed attempts, so that a file fetched
    again whole after a checksum mismatch still uses up its attempts."""

    def __init__(self, retry: Retry):
        self.retry = retry
        self.last_heard = time.monotonic()
        self.failures_since_progress = 0

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def progressed(self) -> None:
        self.heard()
        self.failures_since_progress = 0

    def remaining(self) -> float:
        return self.retry.deadline_s - (time.monotonic() - self.last_heard)

    def timeout(self) -> float:
        """This attempt's connect/read timeout: the configured one, cut short so as not to pass the deadline."""
        return max(0.1, min(self.retry.timeout_s, self.remaining()))


def attempts(
    retry: Retry, what: str, clock: Clock | None = None, also_retry: Callable[[BaseException], bool] = lambda e: False
) -> Iterator[tenacity.AttemptManager]:
    """`for attempt in attempts(retry, url): with attempt: ...` — the body runs until it succeeds, or raises
    `GaveUp` naming `what` and the last fault. Faults that are not transient (nor `also_retry`) are raised as they
    are. Pass a `Clock` that the body tells of progress to make its deadline count from the last byte."""
    clock = clock or Clock(retry)

    def retryable(err: BaseException) -> bool:
        if is_transient(err) or also_retry(err):
            clock.failures_since_progress += 1
            return True
        return False

    def give_up(state: tenacity.RetryCallState) -> bool:
        return clock.failures_since_progress >= retry.attempts or clock.remaining() <= 0

    def wait(state: tenacity.RetryCallState) -> float:
        # doubling with the failures since the last progress, not with every attempt (tenacity's own waits): a long
        # download whose connection breaks now and then, each time after new bytes, keeps waiting briefly
        pause = retry.backoff_s * 2 ** max(clock.failures_since_progress - 1, 0) + random.uniform(0, retry.backoff_s)
        return max(0.0, min(pause, clock.remaining()))

    def failed(state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception()
        if clock.remaining() <= 0:
            limit = f"nothing arrived for {retry.deadline_s:g} s"
        else:
            limit = f"{retry.attempts} failed attempts in a row"
        raise GaveUp(f"{what}: gave up after {limit} ({type(err).__name__}: {err})") from err

    return iter(
        tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable), stop=give_up, wait=wait, retry_error_callback=failed
        )
    )


def call(fn: Callable[..., object], retry: Retry, what: str, *args, **kwargs):
    """`fn(*args, **kwargs)` under the retry policy (for calls that return whole, such as an S3 listing)."""
    for attempt in attempts(retry, what):
        with attempt:
            return fn(*args, **kwargs)
