"""Shards cut into chunks of whole lines: the unit of parallel work of the dedup and tokenize stages, so that one
big shard is many tasks and a cluster is not capped at one busy core per shard.

A chunk is the shortest run of whole lines holding at least `chunk_bytes` decompressed bytes, starting where the
previous one ends (the last chunk of a shard may be shorter). Planning reads each shard once (a streaming Ray task
per shard) to find those line starts and their line numbers, handing each chunk on as soon as it is found
(`map_chunks`); a chunk then reads only its own lines. A plain shard is read
from the chunk's offset; a zstd stream cannot seek, so planning, given a scratch folder, also writes each chunk of
a zstd shard but the first (which starts the stream) into a file of its own (zstd level 1, a few hundred MB/s):
otherwise each chunk would decompress everything before it, about k/2 shards' worth for k chunks (terabytes for
the Pile's 27 GB shards).
Every stage's result is the same whatever the chunk size.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from neox.data.jsonl import Document, Rejects, decompressed_blocks, parse_line, split_lines
from neox.runtime.progress import progress

DEFAULT_CHUNK_MB = 256


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Lines [first_line, ...) of a shard, at decompressed bytes [start, end)."""

    shard: Path
    shard_index: int  # the shard's position in the stage's shard list, the order its documents are numbered in
    start: int
    end: int
    first_line: int  # 1-based, as rejects and dedup clusters number lines
    copy: Path | None = None  # these lines alone, cut out of a zstd shard when it was planned: read instead

    @property
    def label(self) -> str:
        """A file-name-safe name, sorting in shard and line order."""
        return chunk_label(self.shard_index, self.first_line)


def chunk_label(shard_index: int, first_line: int) -> str:
    return f"{shard_index:06d}-{first_line:012d}"


class _Copies:
    """The zstd files a shard's chunks after the first are copied into while it is planned, one per chunk."""

    def __init__(self, folder: Path, shard_index: int):
        self.folder, self.shard_index = folder, shard_index
        self.path: Path | None = None
        self._out = None

    def start(self, first_line: int) -> None:
        self.path = self.folder / f"{chunk_label(self.shard_index, first_line)}.jsonl.zst"
        self._out = zstandard.ZstdCompressor(level=1).stream_writer(open(self.path, "wb"))

    def write(self, data: bytes) -> None:
        """Append to the chunk being copied (none yet while the first chunk, read from the shard, is scanned)."""
        if self._out is not None:
            self._out.write(data)

    def finish(self) -> Path | None:
        """Close the chunk being copied; its file (None for the first chunk)."""
        if self._out is not None:
            self._out.close()  # closes the file too
            self._out = None
        return self.path


def shard_chunks(shard: Path, shard_index: int, chunk_bytes: int, scratch: Path | None = None) -> Iterator[Chunk]:
    """The chunks of one shard (none for an empty shard), each yielded as soon as its end is found, so that work
    on it can start while the rest of the shard is planned. With `scratch`, a zstd shard's chunks but the first are
    also copied there, one file each, closed before the chunk is yielded."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    if not shard.name.endswith(".zst") and shard.stat().st_size <= chunk_bytes:
        size = shard.stat().st_size  # one chunk, known without reading it
        if size:
            yield Chunk(shard, shard_index, 0, size, 1)
        return
    copies = _Copies(scratch, shard_index) if scratch is not None and shard.name.endswith(".zst") else None
    start, line = 0, 1  # of the chunk being read
    target = chunk_bytes  # the next chunk starts at the first line start at or after this offset
    offset, newlines = 0, 0  # of the current block: its offset, and the newlines before it
    try:
        for block in decompressed_blocks(shard):
            written = 0
            while target <= offset + len(block):
                # a line starts at `target` when the byte before it is a newline
                found = block.find(b"\n", max(0, target - 1 - offset))
                if found < 0:
                    break
                end = offset + found + 1
                copy = None
                if copies:
                    copies.write(block[written : end - offset])
                    written = end - offset
                    copy = copies.finish()
                yield Chunk(shard, shard_index, start, end, line, copy)
                start, line = end, newlines + block.count(b"\n", 0, found + 1) + 1
                target = start + chunk_bytes
                if copies:
                    copies.start(line)
            if copies:
                copies.write(block[written:])
            offset += len(block)
            newlines += block.count(b"\n")
        copy = copies.finish() if copies else None
    except BaseException:
        if copies:
            copies.finish()
        raise
    if start < offset:
        yield Chunk(shard, shard_index, start, offset, line, copy)
    elif copy is not None:
        copy.unlink()  # the copy started at the end of the shard: no line is in it


def plan_shard(shard: Path, shard_index: int, chunk_bytes: int, scratch: Path | None = None) -> list[Chunk]:
    """Every chunk of one shard (see `shard_chunks`)."""
    return list(shard_chunks(shard, shard_index, chunk_bytes, scratch))


def map_chunks(
    shards: list[Path],
    chunk_bytes: int,
    scratch: Path | None,
    task: Any,
    task_args: Callable[[Chunk], tuple],
    workers: int | None,
    desc: str,
) -> tuple[list[Chunk], list[Any]]:
    """Cut the shards into chunks (zstd ones copied into `scratch`, see `shard_chunks`) and run the Ray remote
    function `task.remote(chunk, *task_args(chunk))` on each as soon as it is planned, with at most `workers` tasks
    (planners included) at once (default: the cluster's CPUs). Planning a shard is one streaming task, so work on
    its first chunks overlaps the reading of the rest instead of waiting for every shard to be planned.
    Returns every chunk, in shard and line order, and the task's result for each; a failing task or planner
    cancels the rest and re-raises its own exception; so does an interrupt (Ctrl-C, a timeout)."""
    import ray  # here, so that the CLI reads DEFAULT_CHUNK_MB without loading Ray

    from neox.runtime.ray_cluster import cancel, cancel_and_raise, cpu_limit

    planner = ray.remote(num_cpus=1)(shard_chunks)  # a generator: Ray hands its chunks over as they are yielded
    limit = cpu_limit(workers)
    to_plan = list(enumerate(shards))
    planning: list[Any] = []  # ObjectRefGenerators of the shards being planned
    planned: collections.deque[Chunk] = collections.deque()  # waiting for a free worker
    running: dict[Any, Chunk] = {}
    results: dict[str, tuple[Chunk, Any]] = {}
    with progress(total=0, desc=desc, unit="chunk") as bar:
        while to_plan or planning or planned or running:
            while len(planning) + len(running) < limit and (planned or to_plan):
                if planned:
                    chunk = planned.popleft()
                    running[task.remote(chunk, *task_args(chunk))] = chunk
                else:
                    shard_index, shard = to_plan.pop(0)
                    planning.append(planner.remote(shard, shard_index, chunk_bytes, scratch))
            try:
                ready = ray.wait([*planning, *running], num_returns=1)[0][0]
                if ready in running:
                    chunk = running.pop(ready)
                    results[chunk.label] = (chunk, ray.get(ready))
                    bar.update(1)
                    continue
                try:
                    planned.append(ray.get(next(ready)))
                    bar.total += 1
                    bar.refresh()
                except StopIteration:
                    planning.remove(ready)
            except ray.exceptions.RayTaskError as err:
                cancel_and_raise(err, [*planning, *running])
            except BaseException:  # an interrupt (Ctrl-C, a timeout): leave nothing running
                cancel([*planning, *running])
                raise
    ordered = [results[label] for label in sorted(results)]
    return [chunk for chunk, _ in ordered], [result for _, result in ordered]


def chunk_lines(chunk: Chunk) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for each line of the chunk."""

    def blocks() -> Iterator[bytes]:
        remaining = chunk.end - chunk.start
        source, start = (chunk.copy, 0) if chunk.copy is not None else (chunk.shard, chunk.start)
        for block in decompressed_blocks(source, start):
            yield block[:remaining]
            remaining -= len(block)
            if remaining <= 0:
                return

    return enumerate(split_lines(blocks()), start=chunk.first_line)


def read_chunk(chunk: Chunk, rejects: Rejects) -> Iterator[Document]:
    """The chunk's documents, in order; bad lines go to rejects as `read_shard` does."""
    for number, raw_line in chunk_lines(chunk):
        if (doc := parse_line(chunk.shard.name, number, raw_line, rejects)) is not None:
            yield doc
