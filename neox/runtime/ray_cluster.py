"""Connecting to Ray: a running cluster when an address is given (or RAY_ADDRESS is set), else a local
instance sized to the cores we may use. Data stages and training both go through here."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import ray

from neox.errors import ConfigError
from neox.runtime.progress import progress

_joined: str | None = None  # the cluster this process joined; None on a local Ray (Ray connects once per process)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; later calls reuse the connection (a process joins one cluster)."""
    global _joined
    if ray.is_initialized():
        return
    address = ray_cluster_address(address)
    if address and address != "local":
        context = ray.init(address=address, configure_logging=False)
        _joined = address
        if context.dashboard_url:  # a cluster's head runs it (ray[default]); locally it stays off
            print(f"Ray dashboard: http://{context.dashboard_url} (it asks for the cluster's Ray token)", flush=True)
    else:
        ray.init(
            # "local": a Ray of our own, even where `ray start` left one running that ray.init() would join
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            configure_logging=False,
        )


def ray_cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join (`address`, else RAY_ADDRESS), or None for a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def on_cluster() -> bool:
    """Whether `ensure_ray` joined a cluster (rather than starting a local Ray)."""
    return _joined is not None


def refuse_beyond_local(need: dict[str, float], what: str, fix: str) -> None:
    """On a local Ray (`ensure_ray` started it), which has every resource it ever will, a request beyond it would
    wait for ever (Ray Train retries its worker group's placement every 60 s): it is refused at once, naming `what`
    asked for it and the `fix`. A cluster may still be adding nodes, so there it waits."""
    if on_cluster():
        return
    have, need = ray.cluster_resources(), {name: amount for name, amount in need.items() if amount}
    short = [f"{amount:g} {name}" for name, amount in need.items() if amount > have.get(name, 0)]
    if short:
        mine = " and ".join(f"{have.get(name, 0):g} {name}" for name in need)
        raise ConfigError(f"{what} needs {' and '.join(short)}, but this machine's Ray has {mine}: {fix}")


def run_ordered(calls: list[tuple[Any, tuple]], workers: int | None, desc: str, unit: str) -> list[Any]:
    """Run Ray remote functions `fn.remote(*args)` with at most `workers` in flight (default: the cluster's
    CPUs), with a progress bar; results come back in the order of `calls`, whatever order they finish in.
    A failing task cancels the rest and re-raises its own exception; so does an interrupt (Ctrl-C, a timeout)."""
    limit = cpu_limit(workers)
    results: dict[int, Any] = {}
    pending: dict[Any, int] = {}
    queue = list(enumerate(calls))
    with progress(total=len(calls), desc=desc, unit=unit) as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                i, (fn, args) = queue.pop(0)
                pending[fn.remote(*args)] = i
            try:
                done, _ = ray.wait(list(pending), num_returns=1)
                results[pending.pop(done[0])] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                cancel_and_raise(err, list(pending))
            except BaseException:
                cancel(list(pending))
                raise
            bar.update(1)
    return [results[i] for i in range(len(calls))]


def cpu_limit(workers: int | None) -> int:
    """Tasks to keep in flight: `workers`, else every CPU the cluster has."""
    return workers or max(1, int(ray.available_resources().get("CPU", 1)))


def cancel_and_raise(err: ray.exceptions.RayTaskError, pending: list[Any]) -> NoReturn:
    """Cancel the tasks still pending, then raise the failed task's own exception, with its clear message."""
    cancel(pending)
    raise err.cause from None


def cancel(pending: list[Any]) -> None:
    """Stop the tasks: force, because a plain cancel leaves a running task running until it next yields to Ray (a
    stage task writes only under its stage's temp folder, which is never published)."""
    for ref in pending:
        ray.cancel(ref, force=True)
