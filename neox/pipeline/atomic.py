"""Atomic publication of output directories and files: write into a temporary sibling, rename into place when
complete. A reader therefore sees either no output or a whole one, never a half-written one left by a crash.
Also the advisory file lock concurrent runs take turns with (fcntl, so it holds on a POSIX shared file system).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from neox.errors import ConfigError, OutputExists

# mkstemp creates files readable by their owner only; a published file gets the mode any new file would (the
# umask is read once, at import, because reading it means setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def make_folder(path: str | Path) -> Path:
    """`mkdir -p`, with an error naming the path when a part of it is an existing file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"cannot create the folder {path}: {path} or a folder above it is a file") from None
    return path


@contextlib.contextmanager
def atomic_directory(
    final: str | Path, overwrite: bool = False, keep: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `final`; on success rename it to `final`.

    On an exception the temporary directory is removed and `final` is untouched. An existing `final` is
    an error unless `overwrite`, in which case it is swapped out only after the new one is complete, or
    stays (and the new one is dropped) when `keep(final)` says it is good: content-addressed outputs that
    another process published meanwhile are the same content, and a reader may be using them.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExists(f"{final} already exists (pass overwrite to replace it)")
    make_folder(final.parent)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if keep is not None and final.exists() and keep(final):
            return
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            try:
                os.rename(tmp, final)
            except OSError:  # another process published `final` between the check and the rename
                if keep is None or not keep(final):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) across processes on this host or a
    POSIX shared file system; released when the block ends or the process dies."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_text(path: str | Path, text: str, check: Callable[[Path], None] | None = None) -> Path:
    """Write `text` to a unique temporary sibling of `path` and rename it into place. `check(temporary)` runs
    before the rename: when it raises, `path` stays as it was (a config that fails validation is not written)."""
    path = Path(path)
    make_folder(path.parent)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give a file name to write")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
