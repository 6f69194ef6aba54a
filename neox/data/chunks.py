"""Shards cut into chunks of whole lines: the unit of parallel work of the dedup and tokenize stages, so that one
big shard is many tasks and a cluster is not capped at one busy core per shard.

A chunk is the shortest run of whole lines holding at least `chunk_bytes` decompressed bytes, starting where the
previous one ends (the last chunk of a shard may be shorter). Planning reads each shard once (a Ray task per shard)
to find those line starts and their line numbers; a chunk then reads only its own lines. A zstd stream cannot seek,
so reading a chunk decompresses what precedes it: with chunks of 1/k of a shard, planning and reading decompress
about (k + 3) / 2 shards' worth, cheap next to shingling or tokenizing (zstd decompresses at GB/s, those run
at MB/s). Every stage's result is the same whatever the chunk size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from neox.data.jsonl import Document, Rejects, decompressed_blocks, parse_line, split_lines

DEFAULT_CHUNK_MB = 256


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Lines [first_line, ...) of a shard, at decompressed bytes [start, end)."""

    shard: Path
    shard_index: int  # the shard's position in the stage's (name-sorted) shard list
    start: int
    end: int
    first_line: int  # 1-based, as rejects and dedup clusters number lines

    @property
    def label(self) -> str:
        """A file-name-safe name, sorting in shard and line order."""
        return f"{self.shard_index:06d}-{self.first_line:012d}"


def plan_shard(shard: Path, shard_index: int, chunk_bytes: int) -> list[Chunk]:
    """The chunks of one shard (none for an empty shard)."""
    if not shard.name.endswith(".zst") and shard.stat().st_size <= chunk_bytes:
        size = shard.stat().st_size  # one chunk, known without reading it
        return [Chunk(shard, shard_index, 0, size, 1)] if size else []
    starts, lines = [0], [1]
    target = chunk_bytes  # the next chunk starts at the first line start at or after this offset
    offset, newlines = 0, 0  # of the current block: its offset, and the newlines before it
    for block in decompressed_blocks(shard):
        while target <= offset + len(block):
            # a line starts at `target` when the byte before it is a newline
            found = block.find(b"\n", max(0, target - 1 - offset))
            if found < 0:
                break
            starts.append(offset + found + 1)
            lines.append(newlines + block.count(b"\n", 0, found + 1) + 1)
            target = starts[-1] + chunk_bytes
        offset += len(block)
        newlines += block.count(b"\n")
    if starts[-1] == offset:  # no line starts at the end of the shard (and an empty shard has no chunk)
        starts.pop()
        lines.pop()
    ends = [*starts[1:], offset] if starts else []
    return [Chunk(shard, shard_index, s, e, n) for s, e, n in zip(starts, ends, lines, strict=True)]


def plan_chunks(shards: list[Path], chunk_bytes: int, workers: int | None) -> list[Chunk]:
    """Every shard's chunks, in shard and line order (one Ray task per shard)."""
    import ray  # here, so that the CLI reads DEFAULT_CHUNK_MB without loading Ray

    from neox.runtime.ray_cluster import run_ordered

    planner = ray.remote(num_cpus=1)(plan_shard)
    calls = [(planner, (shard, i, chunk_bytes)) for i, shard in enumerate(shards)]
    return [chunk for planned in run_ordered(calls, workers, "plan chunks", "shard") for chunk in planned]


def chunk_lines(chunk: Chunk) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for each line of the chunk."""

    def blocks() -> Iterator[bytes]:
        remaining = chunk.end - chunk.start
        for block in decompressed_blocks(chunk.shard, chunk.start):
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
