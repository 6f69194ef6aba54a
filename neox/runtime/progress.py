"""Progress of long work: a tqdm bar on a terminal; in a log file (stderr not a terminal) a plain line now and then,
since a bar redrawn with carriage returns becomes one very long line there. Off a terminal the libraries' own bars
are turned off (`quiet_library_bars`). tqdm is imported only when a bar is made: tqdm reads its TQDM_*
environment when imported, so the entry points call `quiet_library_bars` before anything imports it."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

LOG_INTERVAL_S = 30.0
# each a bar for a second or less of work here: datasets' split generation, lm-eval's context building (a bar
# made without an explicit `disable`, which ours always pass), MLflow's artifact transfers, the Hugging Face hub
LIBRARY_BARS_OFF = {
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_library_bars() -> None:
    """Off a terminal, turn the libraries' progress bars off (a variable the user set is kept); ours stay, as
    lines. Call it before the libraries are imported."""
    if not sys.stderr.isatty():
        for name, value in LIBRARY_BARS_OFF.items():
            os.environ.setdefault(name, value)


class Lines:
    """A stream for tqdm that writes each redraw as a line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, **options: Any) -> tqdm:
    """tqdm(iterable, **options) on a terminal; otherwise the same progress as a line every 30 s (and at the end)."""
    from tqdm import tqdm

    options.setdefault("disable", False)  # explicit, so that TQDM_DISABLE turns off only the libraries' bars
    if sys.stderr.isatty():
        return tqdm(iterable, **options)
    return tqdm(iterable, file=Lines(sys.stderr), mininterval=LOG_INTERVAL_S, ascii=True, ncols=100, **options)
