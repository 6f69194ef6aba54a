"""The GPT-NeoX/Megatron mmap indexed dataset: `PREFIX.bin` holds the token ids of every sequence back to
back; `PREFIX.idx` holds

    magic b"MMIDIDX\\x00\\x00" | <Q version (1) | <B dtype code | <Q sequence count | <Q doc_idx count
    | int32 sizes[count] | int64 byte pointers[count] | int64 doc_idx[doc count]

byte for byte as gpt-neox's `tools/datasets/preprocess_data.py` writes it, so datasets move freely between
the two. We write one sequence per document (text followed by the end-of-document id), doc_idx = [0..N].
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from neox.errors import DataError, MissingInput

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float32,
    7: np.float64,
    8: np.uint16,
}
CODE_OF = {np.dtype(t): code for code, t in DTYPE_CODES.items()}


class IndexFormatError(DataError):
    """An .idx file that is not a GPT-NeoX mmap index."""


def token_dtype(vocab_size: int) -> np.dtype:
    """gpt-neox's best_fitting_dtype: uint16 when the vocabulary fits with margin, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def write_index(path: str | Path, sizes: Callable[[], Iterable[np.ndarray]], dtype: np.dtype) -> None:
    """Write PREFIX.idx for the sequence sizes `sizes()` yields block by block (called three times: the sizes, the
    byte pointers and the count are streamed, so memory is one block, whatever the dataset's size)."""
    count = sum(len(block) for block in sizes())
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", CODE_OF[np.dtype(dtype)]))
        f.write(struct.pack("<Q", count))
        f.write(struct.pack("<Q", count + 1))
        for block in sizes():
            f.write(np.asarray(block, dtype=np.int32).tobytes())
        pointer = 0
        for block in sizes():
            ends = pointer + np.cumsum(np.asarray(block, dtype=np.int64) * np.dtype(dtype).itemsize)
            f.write(np.concatenate([[pointer], ends[:-1]]).astype(np.int64).tobytes() if len(block) else b"")
            pointer = int(ends[-1]) if len(block) else pointer
        for start in range(0, count + 1, 1 << 24):  # doc_idx: one document per sequence
            f.write(np.arange(start, min(count + 1, start + (1 << 24)), dtype=np.int64).tobytes())


def merge_parts(prefix: str | Path, parts: Sequence[tuple[Path, np.ndarray | Path]], dtype: np.dtype) -> int:
    """Concatenate per-part `.bin` files (in the given order) into PREFIX.bin and write PREFIX.idx for the
    concatenated sizes (an array, or a `.npy` file of them, per part). Returns the token count."""
    prefix = Path(prefix)

    def sizes() -> Iterator[np.ndarray]:
        for _, part_sizes in parts:
            yield np.load(part_sizes) if isinstance(part_sizes, Path) else np.asarray(part_sizes)

    with open(f"{prefix}.bin", "wb") as out:
        for bin_path, _ in parts:
            with open(bin_path, "rb") as part:
                shutil.copyfileobj(part, out, length=1 << 22)
    tokens = sum(int(block.astype(np.int64).sum()) for block in sizes())
    if os.path.getsize(f"{prefix}.bin") != tokens * np.dtype(dtype).itemsize:
        raise IndexFormatError(
            f"{prefix}.bin has {os.path.getsize(f'{prefix}.bin')} bytes; sizes say {tokens * np.dtype(dtype).itemsize}"
        )
    write_index(f"{prefix}.idx", sizes, dtype)
    return tokens


class IndexedDataset:
    """Read-only, memory-mapped view of a `.bin/.idx` pair, whoever wrote it (us or gpt-neox)."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        idx_path, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
        for path in (idx_path, bin_path):
            if not path.exists():
                raise MissingInput(f"{path} does not exist")
        with open(idx_path, "rb") as f:
            header = f.read(len(MAGIC) + 8 + 1 + 8 + 8)
        if len(header) < 34 or header[: len(MAGIC)] != MAGIC:
            raise IndexFormatError(f"{idx_path} is not a GPT-NeoX mmap index (bad magic)")
        (version,) = struct.unpack("<Q", header[9:17])
        if version != VERSION:
            raise IndexFormatError(f"{idx_path}: index version {version}, expected {VERSION}")
        code = header[17]
        if code not in DTYPE_CODES:
            raise IndexFormatError(f"{idx_path}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        count, doc_count = struct.unpack("<QQ", header[18:34])
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        offset = 34
        expected = offset + count * 4 + count * 8 + doc_count * 8
        if len(index) != expected:
            raise IndexFormatError(f"{idx_path} has {len(index)} bytes; its header implies {expected}")
        self.sizes = np.frombuffer(index, dtype=np.int32, count=count, offset=offset)
        self.pointers = np.frombuffer(index, dtype=np.int64, count=count, offset=offset + count * 4)
        self.doc_idx = np.frombuffer(index, dtype=np.int64, count=doc_count, offset=offset + count * 12)
        self.tokens = np.memmap(bin_path, mode="r", dtype=self.dtype)
        if count and self.pointers[-1] // self.dtype.itemsize + self.sizes[-1] > len(self.tokens):
            raise IndexFormatError(f"{bin_path} is shorter than its index says (truncated?)")

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens of sequence i, from `offset`, `length` of them (default: to its end)."""
        start = self.pointers[i] // self.dtype.itemsize + offset
        end = start + (self.sizes[i] - offset if length is None else length)
        return np.asarray(self.tokens[start:end])

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.astype(np.int64).sum())
