"""Progress of long work: a tqdm bar on a terminal; in a log file (stderr not a terminal) a plain line now and then,
since a bar redrawn with carriage returns becomes one very long line there."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


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
    if sys.stderr.isatty():
        return tqdm(iterable, **options)
    return tqdm(iterable, file=Lines(sys.stderr), mininterval=LOG_INTERVAL_S, ascii=True, ncols=100, **options)
