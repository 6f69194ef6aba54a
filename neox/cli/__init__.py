"""The `neox` command line. Each command only handles its arguments and calls the library; `neox COMMAND --help`
explains it. Commands are defined by topic in this package's modules, registered on import."""

from __future__ import annotations

import errno
import sys

from neox.runtime.progress import quiet_library_bars

quiet_library_bars()  # before the commands' modules import the libraries

import typer  # noqa: E402

from neox.cli.app import app  # noqa: E402
from neox.errors import NeoxError  # noqa: E402

# isort: off
# importing a module registers its commands, in the order `neox --help` lists them
from neox.cli import data, train, evaluate, cluster, model, config  # noqa: F401, E402
# isort: on


def main() -> None:
    try:
        app()
    except NeoxError as err:  # the user's to fix: one line; anything else is a bug and keeps its traceback
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except Exception as err:
        full = out_of_space(err)
        if full is None:
            raise
        where = f" writing {full.filename}" if full.filename else ""
        typer.echo(
            f"error: out of disk space{where} ({full.strerror}): nothing was published; free space and rerun", err=True
        )
        sys.exit(2)
    finally:
        stop_local_ray()


def out_of_space(err: BaseException | None) -> OSError | None:
    """The full-disk (or over-quota, or over the file size limit) error behind `err`: itself, what it was raised
    from, or what a Ray task raised."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__  # a RayTaskError carries `cause`
    return None


def stop_local_ray() -> None:
    """Stop the Ray a command started (or leave the cluster it joined) now: Ray's own exit hook first sleeps
    0.5 s for log lines that have long been printed once a command's tasks have all returned."""
    ray = sys.modules.get("ray")  # not imported: no command here used Ray, and importing it costs 0.3 s
    if ray is not None and ray.is_initialized():
        ray.shutdown()
