"""Shards cut into chunks of whole lines: the unit of parallel work of the dedup and tokenize stages, so that one
big shard is many tasks and a cluster is not capped at one busy core per shard.

A chunk is the shortest run of whole lines holding at least `chunk_bytes` decompressed bytes, starting where the
previous one ends (the last chunk of a shard may be shorter). Planning reads each shard once (a Ray task per shard)
to find those line starts and their line numbers; a chunk then reads only its own lines. A plain shard is read
from the chunk's offset; a zstd stream cannot seek, so planning, given a scratch folder, also writes each chunk of
a zstd shard but the first (which starts the stream) into a file of its own (zstd level 1, a few hundred MB/s):
otherwise each chunk would decompress everything before it, about k/2 shards' worth for k chunks (terabytes for
the Pile's 27 GB shards).
Every stage's result is the same whatever the chunk size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import zstandard

from neox.data.jsonl import Document, Rejects, decompressed_blocks, parse_line, split_lines

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
        self.folder, self.shard_index, self.paths = folder, shard_index, []
        self._out = None

    def start(self, first_line: int) -> None:
        self.close()
        self.paths.append(self.folder / f"{chunk_label(self.shard_index, first_line)}.jsonl.zst")
        self._out = zstandard.ZstdCompressor(level=1).stream_writer(open(self.paths[-1], "wb"))

    def write(self, data: bytes) -> None:
        """Append to the chunk being copied (none yet while the first chunk, read from the shard, is scanned)."""
        if self._out is not None:
            self._out.write(data)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()  # closes the file too
            self._out = None


def plan_shard(shard: Path, shard_index: int, chunk_bytes: int, scratch: Path | None = None) -> list[Chunk]:
    """The chunks of one shard (none for an empty shard). With `scratch`, a zstd shard's chunks but the first are
    also copied there, one file each."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    if not shard.name.endswith(".zst") and shard.stat().st_size <= chunk_bytes:
        size = shard.stat().st_size  # one chunk, known without reading it
        return [Chunk(shard, shard_index, 0, size, 1)] if size else []
    copies = _Copies(scratch, shard_index) if scratch is not None and shard.name.endswith(".zst") else None
    starts, lines = [0], [1]
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
                starts.append(offset + found + 1)
                lines.append(newlines + block.count(b"\n", 0, found + 1) + 1)
                target = starts[-1] + chunk_bytes
                if copies:
                    copies.write(block[written : found + 1])
                    copies.start(lines[-1])
                    written = found + 1
            if copies:
                copies.write(block[written:])
            offset += len(block)
            newlines += block.count(b"\n")
    finally:
        if copies:
            copies.close()
    if starts[-1] == offset:  # no line starts at the end of the shard (and an empty shard has no chunk)
        starts.pop()
        lines.pop()
    ends = [*starts[1:], offset] if starts else []
    copied = [None, *copies.paths[: len(starts) - 1]] if copies else [None] * len(starts)
    for path in copies.paths[len(starts) - 1 :] if copies else []:
        path.unlink()  # the copy started at the end of the shard: no line is in it
    return [Chunk(shard, shard_index, *chunk) for chunk in zip(starts, ends, lines, copied, strict=True)]


def plan_chunks(shards: list[Path], chunk_bytes: int, workers: int | None, scratch: Path | None = None) -> list[Chunk]:
    """Every shard's chunks, in shard and line order (one Ray task per shard); zstd shards' chunks copied into
    `scratch` (see `plan_shard`)."""
    import ray  # here, so that the CLI reads DEFAULT_CHUNK_MB without loading Ray

    from neox.runtime.ray_cluster import run_ordered

    planner = ray.remote(num_cpus=1)(plan_shard)
    calls = [(planner, (shard, i, chunk_bytes, scratch)) for i, shard in enumerate(shards)]
    return [chunk for planned in run_ordered(calls, workers, "plan chunks", "shard") for chunk in planned]


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
