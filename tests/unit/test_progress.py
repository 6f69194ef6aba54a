"""Progress display: a bar on a terminal, plain lines in a log file."""

from __future__ import annotations

import subprocess
import sys


def test_in_a_log_file_progress_is_a_few_plain_lines_not_one_redrawn_bar():
    code = "from neox.runtime.progress import progress\nfor _ in progress(range(50_000), desc='work'): pass"
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr
    lines = err.splitlines()
    assert "\r" not in err and 1 <= len(lines) <= 3, lines  # the start and the end; a line per 30 s in between
    assert lines[-1].startswith("work: 100%") and all(len(line) <= 100 for line in lines)
