"""How a flow run from the command line (`python -m flows.NAME`, `neox pretrain|finetune`) ends on a user's
mistake: one `error:` line and exit 2, as every `neox` command does. Prefect's log above it keeps the traceback
of the task that stopped, for the Prefect UI."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from neox.errors import NeoxError


@contextmanager
def one_line_errors() -> Iterator[None]:
    try:
        yield
    except NeoxError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
