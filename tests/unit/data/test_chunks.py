"""Chunks of shards: whatever the chunk size, the chunks of a shard are its lines, each once, in order, numbered as
reading the whole shard numbers them."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import ray
import zstandard

from neox.data.chunks import chunk_lines, map_chunks, plan_shard, read_chunk
from neox.data.jsonl import Rejects, read_lines, read_shard
from neox.errors import DataError


def raw_lines(seed: int) -> list[bytes]:
    """Lines of very different lengths (one longer than any chunk below), blank lines, no final newline."""
    rng = random.Random(seed)
    lines = [b"x" * rng.choice([0, 1, 5, 80, 300]) + b"\n" for _ in range(400)]
    lines[17] = b"y" * 5000 + b"\n"
    lines[-1] = lines[-1].rstrip(b"\n") or b"z"
    return lines


def write(path, lines: list[bytes], frames: int = 1) -> None:
    """A plain shard, or a zstd one in `frames` concatenated frames (as some tools write them)."""
    data = b"".join(lines)
    if path.name.endswith(".zst"):
        step = len(data) // frames + 1
        parts = [zstandard.ZstdCompressor().compress(data[i : i + step]) for i in range(0, len(data), step)]
        path.write_bytes(b"".join(parts))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name,frames", [("s.jsonl", 1), ("s.jsonl.zst", 1), ("s.jsonl.zst", 3)])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 100, 999, 4096, 10**9])
@pytest.mark.parametrize("copied", [False, True])
def test_the_chunks_of_a_shard_are_its_lines_in_order(tmp_path, name, frames, chunk_bytes, copied):
    shard = tmp_path / name
    write(shard, raw_lines(chunk_bytes), frames)
    (tmp_path / "scratch").mkdir()
    chunks = plan_shard(shard, 3, chunk_bytes, tmp_path / "scratch" if copied else None)
    # a zstd shard's chunks but the first (which starts the stream) are copied out when planning has a place for them
    expect_copies = copied and name.endswith(".zst")
    assert [c.copy is not None for c in chunks] == [False] + [expect_copies] * (len(chunks) - 1)
    assert len(list((tmp_path / "scratch").iterdir())) == (len(chunks) - 1 if expect_copies else 0)
    assert [n for c in chunks for n, _ in chunk_lines(c)] == list(range(1, 401))
    assert [line for c in chunks for _, line in chunk_lines(c)] == list(read_lines(shard)) == raw_lines(chunk_bytes)
    assert all(c.end - c.start >= chunk_bytes for c in chunks[:-1])
    assert chunks[-1].end == len(b"".join(raw_lines(chunk_bytes)))
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:], strict=False)) and chunks[0].start == 0
    assert {c.shard_index for c in chunks} == {3}


def test_an_empty_shard_has_no_chunks(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b""))
    assert plan_shard(tmp_path / "a.jsonl", 0, 10) == [] and plan_shard(tmp_path / "b.jsonl.zst", 1, 10) == []


def documents_of(chunk):
    rejects = Rejects()
    return [(d.shard, d.line, d.text) for d in read_chunk(chunk, rejects)], rejects.counts


def test_documents_and_rejects_read_by_chunks_are_those_of_the_whole_shard(tmp_path, ray_local):
    lines = [b'{"text": "doc %d", "meta": {"pile_set_name": "S"}}\n' % i for i in range(50)]
    lines[10] = b"{broken\n"
    lines[20] = b'{"text": "lone \\ud800 surrogate"}\n'
    lines[30] = b"\n"
    write(tmp_path / "00.jsonl.zst", lines)
    write(tmp_path / "01.jsonl", lines[:5])
    shards = [tmp_path / "00.jsonl.zst", tmp_path / "01.jsonl"]
    whole = Rejects()
    expected = [(d.shard, d.line, d.text) for s in shards for d in read_shard(s, whole)]
    (tmp_path / "scratch").mkdir()
    chunks, read = map_chunks(
        shards, 200, tmp_path / "scratch", ray.remote(documents_of), lambda c: (), workers=2, desc="read"
    )
    assert len(chunks) > 5 and [c.shard_index for c in chunks] == sorted(c.shard_index for c in chunks)
    assert [doc for docs, _ in read for doc in docs] == expected
    assert sum((Counter(counts) for _, counts in read), Counter()) == whole.counts
    assert sum(whole.counts.values()) == 2
    assert any("not valid Unicode" in reason for reason in whole.counts)


def test_a_shard_corrupt_past_its_first_chunks_fails_the_map_with_its_own_error(tmp_path, ray_local):
    """Work on the first chunks has started while the planner reads on into the damage: its error is the one raised."""
    data = zstandard.ZstdCompressor().compress(b"".join(b'{"text": "doc %d"}\n' % i for i in range(20000)))
    (tmp_path / "00.jsonl.zst").write_bytes(data[: len(data) * 3 // 4])
    (tmp_path / "scratch").mkdir()
    with pytest.raises(DataError, match="00.jsonl.zst"):
        map_chunks(
            [tmp_path / "00.jsonl.zst"], 1000, tmp_path / "scratch", ray.remote(documents_of), lambda c: (), 2, "read"
        )
