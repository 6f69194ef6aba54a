"""The GPT-NeoX mmap indexed format, checked byte by byte against its specification."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from neox.data.indexed import IndexedDataset, IndexFormatError, merge_parts, token_dtype, write_index


def gpt_neox_idx_bytes(sizes, dtype_code, itemsize):
    """The .idx gpt-neox's MMapIndexedDatasetBuilder writes for one sequence per document, spelled out."""
    pointers, position = [], 0
    for size in sizes:
        pointers.append(position)
        position += size * itemsize
    doc_idx = list(range(len(sizes) + 1))
    return (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)
        + struct.pack("<B", dtype_code)
        + struct.pack("<Q", len(sizes))
        + struct.pack("<Q", len(doc_idx))
        + struct.pack(f"<{len(sizes)}i", *sizes)
        + struct.pack(f"<{len(pointers)}q", *pointers)
        + struct.pack(f"<{len(doc_idx)}q", *doc_idx)
    )


@pytest.mark.parametrize("vocab, dtype, code", [(50277, np.uint16, 8), (100_000, np.int32, 4)])
def test_layout_matches_the_specification(tmp_path, vocab, dtype, code):
    docs = [[5, 6, 7, 0], [9, 0], [65000 if dtype == np.uint16 else 99_999, 3, 0]]
    assert token_dtype(vocab) == np.dtype(dtype)
    parts = []
    for i, doc in enumerate(docs):
        np.asarray(doc, dtype=dtype).tofile(tmp_path / f"part{i}.bin")
        parts.append((tmp_path / f"part{i}.bin", np.array([len(doc)])))
    np.save(tmp_path / "part2.sizes.npy", np.array([len(docs[2])], dtype=np.int32))
    parts[2] = (tmp_path / "part2.bin", tmp_path / "part2.sizes.npy")  # sizes given as a file, as tokenize does
    (tmp_path / "empty.bin").write_bytes(b"")
    parts.insert(1, (tmp_path / "empty.bin", np.zeros(0, dtype=np.int32)))  # a chunk whose documents were all empty
    assert merge_parts(tmp_path / "corpus_text_document", parts, np.dtype(dtype)) == 9
    idx = (tmp_path / "corpus_text_document.idx").read_bytes()
    assert idx == gpt_neox_idx_bytes([4, 2, 3], code, np.dtype(dtype).itemsize)
    binary = (tmp_path / "corpus_text_document.bin").read_bytes()
    assert binary == np.asarray(sum(docs, []), dtype=dtype).tobytes()


def test_reader_opens_files_laid_out_by_gpt_neox(tmp_path):
    sizes = [3, 1, 4]
    (tmp_path / "x.idx").write_bytes(gpt_neox_idx_bytes(sizes, 8, 2))
    np.arange(8, dtype=np.uint16).tofile(tmp_path / "x.bin")
    ds = IndexedDataset(tmp_path / "x")
    assert len(ds) == 3 and ds.num_tokens == 8 and ds.dtype == np.uint16
    assert ds[0].tolist() == [0, 1, 2] and ds[1].tolist() == [3] and ds[2].tolist() == [4, 5, 6, 7]
    assert ds.get(2, offset=1, length=2).tolist() == [5, 6]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3]


def test_reader_refuses_what_is_not_an_index(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"NOTMAGIC" + bytes(40))
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(IndexFormatError, match="bad magic"):
        IndexedDataset(tmp_path / "bad")
    write_index(tmp_path / "short.idx", lambda: [np.array([10])], np.dtype(np.uint16))
    np.arange(4, dtype=np.uint16).tofile(tmp_path / "short.bin")
    with pytest.raises(IndexFormatError, match="shorter than its index"):
        IndexedDataset(tmp_path / "short")
    with pytest.raises(FileNotFoundError):
        IndexedDataset(tmp_path / "absent")
