"""Pile-format shards: streaming read/write, bad lines rejected with their location, broken streams refused."""

from __future__ import annotations

import json

import pytest
import zstandard

from neox.data.jsonl import CorruptShardError, Rejects, ZstdFrames, list_shards, read_shard, write_shard
from neox.errors import DataError


def records(n):
    return [
        {"text": f"document {i} " * (i % 7 + 1), "meta": {"pile_set_name": "Github" if i % 2 else "Docs"}}
        for i in range(n)
    ]


@pytest.mark.parametrize("name", ["a.jsonl.zst", "a.jsonl"])
def test_round_trip(tmp_path, name):
    assert write_shard(tmp_path / name, records(500)) == 500
    docs = list(read_shard(tmp_path / name, Rejects()))
    assert [d.text for d in docs] == [r["text"] for r in records(500)]
    assert docs[3].set_name == "Github" and docs[3].line == 4 and docs[3].shard == name
    assert not (tmp_path / (name + ".part")).exists()


def test_bad_lines_are_rejected_with_their_location_and_reading_goes_on(tmp_path):
    lines = [
        json.dumps({"text": "good one", "meta": {}}),
        '{"text": "cut off',
        json.dumps({"meta": {"pile_set_name": "Github"}}),
        json.dumps({"text": 42}),
        json.dumps({"text": "good two"}),
    ]
    raw = ("\n".join(lines) + "\n").encode()
    (tmp_path / "s.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    rejects = Rejects(tmp_path / "rejects.jsonl")
    docs = list(read_shard(tmp_path / "s.jsonl.zst", rejects))
    rejects.close()
    assert [d.text for d in docs] == ["good one", "good two"]
    assert [d.line for d in docs] == [1, 5]
    kept = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["shard"], r["line"]) for r in kept] == [("s.jsonl.zst", 2), ("s.jsonl.zst", 3), ("s.jsonl.zst", 4)]
    assert kept[0]["raw"].startswith('{"text": "cut off') and kept[0]["reason"].startswith("malformed JSON")
    assert rejects.counts == {kept[0]["reason"]: 1, "no string 'text' field": 2}


def test_a_byte_order_mark_before_the_first_line_is_read_as_the_encoding_not_a_reject(tmp_path):
    # what Notepad and PowerShell's `Out-File -Encoding utf8` write at the start of a file
    raw = b"\xef\xbb\xbf" + (json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n").encode()
    (tmp_path / "s.jsonl").write_bytes(raw)
    rejects = Rejects()
    assert [d.text for d in read_shard(tmp_path / "s.jsonl", rejects)] == ["first", "second"]
    assert rejects.total == 0


def test_truncated_stream_names_the_shard_and_offset(tmp_path):
    write_shard(tmp_path / "full.jsonl.zst", records(20000))
    data = (tmp_path / "full.jsonl.zst").read_bytes()
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CorruptShardError, match=rf"cut.jsonl.zst: truncated zstd stream.*offset 0 .*byte {len(data) // 2}"
    ):
        list(read_shard(tmp_path / "cut.jsonl.zst", Rejects()))


def test_corrupt_stream_is_refused(tmp_path):
    write_shard(tmp_path / "full.jsonl.zst", records(20000))
    data = bytearray((tmp_path / "full.jsonl.zst").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.jsonl.zst").write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="bad.jsonl.zst: corrupt zstd data"):
        list(read_shard(tmp_path / "bad.jsonl.zst", Rejects()))


def test_concatenated_frames_read_as_one_stream(tmp_path):
    write_shard(tmp_path / "a.jsonl.zst", records(100))
    data = (tmp_path / "a.jsonl.zst").read_bytes()
    (tmp_path / "twice.jsonl.zst").write_bytes(data + data)
    assert len(list(read_shard(tmp_path / "twice.jsonl.zst", Rejects()))) == 200


@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_a_stream_fed_in_pieces_of_any_size_decompresses_whole_and_a_cut_one_is_caught_at_its_end(piece):
    frames = [zstandard.compress(f"frame {i} ".encode() * 500) for i in range(3)]
    stream = b"".join(frames)  # three frames, one after another, as a download brings them
    whole = ZstdFrames("s.jsonl.zst")
    out = b"".join(b for start in range(0, len(stream), piece) for b in whole.feed(stream[start : start + piece]))
    whole.finish()
    assert out == b"".join(f"frame {i} ".encode() * 500 for i in range(3))
    cut = ZstdFrames("s.jsonl.zst", hint="fetch it again")
    for start in range(0, len(stream) - 5, piece):
        list(cut.feed(stream[start : min(start + piece, len(stream) - 5)]))
    start = len(frames[0]) + len(frames[1])
    with pytest.raises(CorruptShardError, match=rf"truncated zstd stream: .* offset {start} ends .*; fetch it again"):
        cut.finish()


def test_failed_write_publishes_nothing(tmp_path):
    def exploding():
        yield {"text": "one"}
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_shard(tmp_path / "x.jsonl.zst", exploding())
    assert list(tmp_path.iterdir()) == []


def test_list_shards_is_sorted_and_refuses_empty_input(tmp_path):
    for name in ("02.jsonl.zst", "00.jsonl.zst", "01.jsonl", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_shards(tmp_path)] == ["00.jsonl.zst", "01.jsonl", "02.jsonl.zst"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no shards"):
        list_shards(tmp_path / "empty")
    (tmp_path / "03.jsonl.gz").write_bytes(b"")  # a shard that would be skipped: refused instead
    with pytest.raises(DataError, match="03.jsonl.gz is gzip-compressed, which is not read"):
        list_shards(tmp_path)


@pytest.mark.parametrize("entry", ["folder", "broken link"])
def test_an_entry_named_as_a_shard_that_is_not_a_file_is_refused_not_skipped(tmp_path, entry):
    write_shard(tmp_path / "00.jsonl.zst", records(3))
    if entry == "folder":
        (tmp_path / "01.jsonl").mkdir()
    else:
        (tmp_path / "01.jsonl").symlink_to(tmp_path / "moved-away.jsonl")
    with pytest.raises(DataError, match=f"01.jsonl is named as a shard but is a {entry}"):
        list_shards(tmp_path)
