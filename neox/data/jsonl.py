"""Pile-format shards: JSON lines `{"text": str, "meta": {"pile_set_name": str, ...}}`, zstd-compressed
(`.jsonl.zst`) or plain (`.jsonl`). Streaming in both directions, constant memory.

Bad lines do not stop a read: each is handed to a `Rejects` log with its shard and line number and the
read goes on. A truncated or corrupt zstd stream does stop it, with the shard and byte offset, since
nothing after that point can be trusted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from neox.errors import DataError, MissingInput
from neox.pipeline.layout import SHARD_SUFFIXES

# compressions we do not read: a file compressed so is refused by name, never skipped (silent data loss)
OTHER_COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}
# What a stage writes beside its shards (the lines it rejected, dedup's clusters): JSON lines too, never documents
SIDE_FILES = ("rejects.jsonl", "clusters.jsonl.zst")


class CorruptShardError(DataError):
    """A shard that cannot be read past some point (truncated or corrupt compression)."""


@dataclasses.dataclass(frozen=True)
class Document:
    text: str
    meta: dict[str, Any]
    shard: str  # the shard's file name
    line: int  # 1-based line number in the shard

    @property
    def set_name(self) -> str:
        return str(self.meta.get("pile_set_name", "unknown"))


class Rejects:
    """Rejected input lines, written as JSON lines with the source location; counted by reason."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.counts: dict[str, int] = {}
        self._file = open(path, "w", encoding="utf-8") if path is not None else None

    def add(self, shard: str, line: int, reason: str, raw: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self._file is not None:
            self._file.write(json.dumps({"shard": shard, "line": line, "reason": reason, "raw": raw}) + "\n")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def rejects_summary(counts: dict[str, int], shown: int = 3) -> str:
    """One line for the console: how many lines were rejected, the commonest reasons first."""
    if not counts:
        return "no line rejected"
    commonest = sorted(counts.items(), key=lambda item: -item[1])
    reasons = [f"{reason} ({n})" for reason, n in commonest[:shown]]
    if len(commonest) > shown:
        reasons.append(f"{len(commonest) - shown} other reasons")
    return f"{sum(counts.values())} lines rejected: {'; '.join(reasons)}"


def is_shard(path: Path) -> bool:
    return path.name.endswith(SHARD_SUFFIXES) and path.name not in SIDE_FILES


def unread_compression(location: str) -> str | None:
    """Why a file (path or URL) compressed other than with zstd (`x.jsonl.gz`, `x.json.xz`) is not read, with the
    command that makes it readable; None for any other name."""
    name = location.rsplit("/", 1)[-1]
    for suffix, tool in OTHER_COMPRESSIONS.items():
        if name.endswith(suffix):
            stem = name.removesuffix(suffix).removesuffix(".jsonl").removesuffix(".json")
            return (
                f"{location} is {tool}-compressed, which is not read (.jsonl.zst and .jsonl are): recompress it "
                f"with `{tool} -dc {name} | zstd -o {stem}.jsonl.zst`"
            )
    return None


def not_a_shard(location: str) -> str | None:
    """Why a file named as a shard source (path or URL) would not be read, or None for a shard's name: every
    stage after the download reads only `.jsonl.zst` and `.jsonl` files."""
    name = location.rsplit("/", 1)[-1]
    if name.endswith(SHARD_SUFFIXES):
        return None
    return unread_compression(location) or f"{location} is not a shard: shards are .jsonl.zst or .jsonl files"


def refuse_compressed_shards(locations: Iterable[str], error: type[Exception] = DataError) -> None:
    """In a folder of shards, JSON lines compressed otherwise (`x.jsonl.gz`) are refused, not skipped (a skipped
    shard is silent data loss); other files are not shards and are left alone."""
    compressed = tuple(f".jsonl{suffix}" for suffix in OTHER_COMPRESSIONS)
    for location in locations:
        if location.endswith(compressed):
            raise error(f"{unread_compression(location)}, and move the original out of the folder")


CHUNK = 1 << 20


class ZstdFrames:
    """A (possibly multi-frame) zstd stream decompressed as its compressed bytes are fed in, in pieces of any size.
    zstandard's stream reader treats a stream cut mid-frame as a clean end, so frames are followed here: corrupt
    data raises at once, an unfinished last frame at `finish`. `name` and `hint` go into the error."""

    def __init__(self, name: str, hint: str = "re-download the shard"):
        self.name, self.hint = name, hint
        self.frame_start = self.consumed = 0
        self.decoder = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            try:
                out = self.decoder.decompress(data)
            except zstandard.ZstdError as err:
                raise CorruptShardError(
                    f"{self.name}: corrupt zstd data in the frame starting at compressed byte offset "
                    f"{self.frame_start}: {err}; {self.hint}"
                ) from None
            if out:
                yield out
            self.consumed += len(data) - len(self.decoder.unused_data)
            if not self.decoder.eof:
                return
            data = self.decoder.unused_data  # a frame ended; what follows it starts the next one
            self.frame_start = self.consumed
            self.decoder = zstandard.ZstdDecompressor().decompressobj()

    def finish(self) -> None:
        if self.consumed > self.frame_start:
            raise CorruptShardError(
                f"{self.name}: truncated zstd stream: the frame starting at compressed byte offset "
                f"{self.frame_start} ends unfinished at byte {self.consumed} (end of file); {self.hint}"
            )


def _decompressed_chunks(path: Path, raw: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of a zstd file, in blocks, its frames followed (`ZstdFrames`)."""
    frames = ZstdFrames(str(path))
    while data := raw.read(CHUNK):
        yield from frames.feed(data)
    frames.finish()


def decompressed_blocks(path: Path, start: int = 0) -> Iterator[bytes]:
    """The shard's decompressed bytes from offset `start` on, in blocks. A plain file seeks there; a zstd stream
    cannot, so it is decompressed from the beginning and the bytes before `start` are dropped."""
    with open(path, "rb") as raw:
        if not path.name.endswith(".zst"):
            raw.seek(start)
            while block := raw.read(CHUNK):
                yield block
            return
        offset = 0
        for block in _decompressed_chunks(path, raw):
            if offset + len(block) > start:
                yield block[max(0, start - offset) :]
            offset += len(block)


def split_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (newline included; the last one may lack it) of a byte stream given in blocks. A line longer than a
    block is gathered in a list and joined once (adding block to block would copy it once per block)."""
    rest: list[bytes] = []
    for block in blocks:
        if b"\n" not in block:
            rest.append(block)
            continue
        lines = block.split(b"\n")
        if rest:
            lines[0] = b"".join([*rest, lines[0]])
        last = lines.pop()
        for line in lines:
            yield line + b"\n"
        rest = [last] if last else []
    if rest:
        yield b"".join(rest)


def read_lines(path: Path) -> Iterator[bytes]:
    """The raw lines of a shard (decompressed, newline included), numbered from 1 by the caller."""
    return split_lines(decompressed_blocks(path))


def parse_line(shard: str, number: int, raw_line: bytes, rejects: Rejects) -> Document | None:
    """The document on one raw line, or None for a blank line or one handed to `rejects` (malformed JSON, no
    string `text`, text that is not valid Unicode)."""
    if not raw_line.strip():
        return None
    try:
        record = json.loads(raw_line)  # bytes: json reads a UTF-8 byte order mark as part of the encoding
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        rejects.add(shard, number, f"malformed JSON: {err}", raw_line.decode("utf-8", "replace"))
        return None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        rejects.add(shard, number, "no string 'text' field", raw_line.decode("utf-8", "replace"))
        return None
    try:
        # a lone surrogate (JSON's "\ud800", or its raw UTF-8 bytes, which json accepts) cannot be encoded by any
        # later stage: refuse it here, once, for all of them
        record["text"].encode()
    except UnicodeEncodeError as err:
        reason = f"text is not valid Unicode: {err.reason} at character {err.start}"
        rejects.add(shard, number, reason, raw_line.decode("utf-8", "replace"))
        return None
    meta = record.get("meta")
    return Document(record["text"], meta if isinstance(meta, dict) else {}, shard, number)


def read_shard(path: str | Path, rejects: Rejects) -> Iterator[Document]:
    """Documents of one shard, in order. Blank lines are skipped; bad ones go to rejects (`parse_line`)."""
    path = Path(path)
    for number, raw_line in enumerate(read_lines(path), start=1):
        if (doc := parse_line(path.name, number, raw_line, rejects)) is not None:
            yield doc


def write_shard(path: str | Path, records: Iterable[dict[str, Any]], level: int = 3) -> int:
    """Write records as a zstd JSONL shard (plain JSONL if the name ends in .jsonl), via a `.part` file
    renamed into place when complete. Returns the number of records."""
    return write_lines(path, (json.dumps(record, ensure_ascii=False).encode() + b"\n" for record in records), level)


def write_lines(path: str | Path, lines: Iterable[bytes], level: int = 3) -> int:
    """Write raw JSON lines (newline included) as a shard, atomically; returns the number of lines."""
    path = Path(path)
    part = path.with_name(f"{path.name}.part-{uuid.uuid4().hex[:8]}")  # concurrent writers never share one
    count = 0
    try:
        with open(part, "wb") as raw:
            if path.name.endswith(".zst"):
                with zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False) as out:
                    for line in lines:
                        out.write(line)
                        count += 1
            else:
                for line in lines:
                    raw.write(line)
                    count += 1
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return count


def folder_files(folder: Path) -> list[Path]:
    """The files directly in a folder. An entry named as a shard that is not a file (a folder, a broken link)
    is refused, not skipped: its documents would be missing without a word."""
    entries = list(folder.iterdir())
    for entry in entries:
        if is_shard(entry) and not entry.is_file():
            what = "a folder" if entry.is_dir() else "a broken link" if entry.is_symlink() else "not a regular file"
            raise DataError(f"{entry} is named as a shard but is {what}: move it out of {folder} or fix it")
    return [entry for entry in entries if entry.is_file()]


def list_shards(directory: str | Path) -> list[Path]:
    """The shards in a directory, sorted by name (the order every stage processes them in)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingInput(f"input directory {directory} does not exist")
    files = folder_files(directory)
    refuse_compressed_shards(str(p) for p in files)
    shards = sorted(p for p in files if is_shard(p))
    if not shards:
        raise MissingInput(f"no shards ({' or '.join(SHARD_SUFFIXES)} files) in {directory}")
    return shards


def merge_rejects(parts: list[tuple[Path, dict[str, int]]], out: Path) -> dict[str, int]:
    """Concatenate per-shard rejects files (in order) into `out`, written only if anything was rejected;
    the parts are removed. Returns the counts by reason."""
    counts: dict[str, int] = {}
    for _, part_counts in parts:
        for reason, n in part_counts.items():
            counts[reason] = counts.get(reason, 0) + n
    if counts:
        with open(out, "wb") as merged:
            for path, _ in parts:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, merged)
    for path, _ in parts:
        path.unlink(missing_ok=True)
    return counts
