"""GPT2Dataset semantics: the same splits, windows, shuffles and blends as gpt-neox."""

from __future__ import annotations

import numpy as np
import pytest

from neox.data.dataset import (
    BlendedDataset,
    GPT2Dataset,
    blending_indices,
    build_datasets,
    build_sample_idx,
    build_split_datasets,
    split_boundaries,
)
from neox.data.indexed import IndexedDataset, merge_parts


def gpt_neox_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    """gpt-neox's helpers.build_sample_idx, transcribed loop for loop."""
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_idx = np.zeros([num_samples + 1, 2], dtype=np.int64)
    sample_index, doc_idx_index, doc_offset = 1, 0, 0
    while sample_index <= num_samples:
        remaining = seq_length + 1
        while remaining != 0:
            doc_length = sizes[doc_idx[doc_idx_index]] - doc_offset
            remaining -= doc_length
            if remaining <= 0:
                doc_offset += remaining + doc_length - 1
                remaining = 0
            else:
                doc_idx_index += 1
                doc_offset = 0
        sample_idx[sample_index] = (doc_idx_index, doc_offset)
        sample_index += 1
    return sample_idx


def gpt_neox_blending(weights, size):
    """gpt-neox's helpers.build_blending_indices, transcribed."""
    weights = np.asarray(weights, dtype=np.float64) / sum(weights)
    current = [0] * len(weights)
    out = []
    for i in range(size):
        errors = [weights[d] * max(i, 1) - current[d] for d in range(len(weights))]
        chosen = max(range(len(weights)), key=lambda d: (errors[d], -d))
        out.append((chosen, current[chosen]))
        current[chosen] += 1
    return out


@pytest.fixture
def indexed(tmp_path):
    """60 documents of 1..17 tokens; document d holds tokens d*1000, d*1000+1, ..."""
    rng = np.random.RandomState(0)
    sizes = rng.randint(1, 18, size=60)
    for d, size in enumerate(sizes):
        (np.arange(size, dtype=np.int32) + d * 1000).tofile(tmp_path / f"{d}.bin")
    merge_parts(
        tmp_path / "data", [(tmp_path / f"{d}.bin", np.array([s])) for d, s in enumerate(sizes)], np.dtype(np.int32)
    )
    return IndexedDataset(tmp_path / "data")


@pytest.mark.parametrize("seq_length", [1, 4, 7, 16, 33])
def test_sample_idx_equals_the_gpt_neox_loop(seq_length):
    rng = np.random.RandomState(seq_length)
    sizes = rng.randint(1, 12, size=40).astype(np.int32)
    doc_idx = rng.permutation(np.tile(np.arange(40, dtype=np.int32), 3))
    tokens = int(sizes.sum())
    expected = gpt_neox_sample_idx(sizes, doc_idx, seq_length, 3, tokens)
    np.testing.assert_array_equal(build_sample_idx(sizes, doc_idx, seq_length, 3, tokens), expected)


@pytest.mark.parametrize(
    "split, n, expected",
    [
        ("969,30,1", 1000, [0, 969, 999, 1000]),
        ("98,2", 10, [0, 10, 10, 10]),
        # rounding gives [0, 3, 6, 9]; gpt-neox then shifts every boundary by the shortfall
        ("1/1/1", 10, [0, 4, 7, 10]),
    ],
)
def test_split_boundaries_follow_gpt_neox(split, n, expected):
    assert split_boundaries(split, n) == expected


def test_samples_are_contiguous_windows_packed_across_documents(indexed):
    ds = GPT2Dataset(indexed, np.arange(60), num_samples=50, seq_length=8, seed=1234)
    stream = np.concatenate([indexed[int(d)] for d in ds.doc_idx])
    assert len(ds) >= 50
    for i in range(len(ds)):
        j = int(ds.shuffle_idx[i])
        np.testing.assert_array_equal(ds[i], stream[j * 8 : j * 8 + 9])  # 9 tokens, one shared with the next
    assert len({tuple(ds[i]) for i in range(len(ds))}) == len(ds)


def test_a_sample_is_a_pure_function_of_its_inputs(indexed, tmp_path):
    a = GPT2Dataset(indexed, np.arange(60), num_samples=40, seq_length=8, seed=7)
    b = GPT2Dataset(indexed, np.arange(60), num_samples=40, seq_length=8, seed=7, cache_dir=tmp_path / "cache")
    c = GPT2Dataset(
        indexed, np.arange(60), num_samples=40, seq_length=8, seed=7, cache_dir=tmp_path / "cache"
    )  # from cache
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    for i in (0, 13, 39):
        np.testing.assert_array_equal(a[i], b[i])
        np.testing.assert_array_equal(a[i], c[i])
    other_seed = GPT2Dataset(indexed, np.arange(60), num_samples=40, seq_length=8, seed=8)
    assert any(not np.array_equal(a[i], other_seed[i]) for i in range(10))


def test_more_samples_than_one_epoch_tile_the_documents(indexed):
    ds = GPT2Dataset(indexed, np.arange(10), num_samples=100, seq_length=16, seed=0)
    epochs = len(ds.doc_idx) // 10
    assert epochs > 1 and sorted(ds.doc_idx.tolist()) == sorted(list(range(10)) * epochs)


def test_splits_never_share_documents(indexed):
    sets = build_split_datasets(indexed.prefix, "8,1,1", {"train": 30, "valid": 5, "test": 5}, seq_length=4, seed=0)
    docs = {name: {int(t) // 1000 for i in range(len(ds)) for t in ds[i]} for name, ds in sets.items()}
    assert (
        docs["train"] <= set(range(48)) and docs["valid"] <= set(range(48, 54)) and docs["test"] <= set(range(54, 60))
    )


@pytest.mark.parametrize(
    "weights",
    [[0.7, 0.3], [1, 2, 5], [0.5, 0.25, 0.25], [1, 1], [3, 0, 1], [0.13, 0.29, 0.05, 0.53], [1] + [0.01] * 10],
)
def test_blending_keeps_every_dataset_within_half_a_sample_per_dataset_of_its_share(weights):
    """As gpt-neox's greedy rule, nearly: it stays within about one sample; with one large dataset beside many small
    ones ours lets the large one lag by up to half a sample per small one (4.5 of 100,000s in the last case)."""
    size = 5000
    index, sample = blending_indices(weights, size)
    reference = np.asarray([d for d, _ in gpt_neox_blending(weights, size)])
    shares = np.asarray(weights, dtype=float) / sum(weights)

    def counts_and_deviation(chosen):  # each dataset's count after every sample, and the farthest from its share
        counts = np.stack([np.cumsum(chosen == k) for k in range(len(weights))], axis=1)
        return counts, np.abs(counts - np.outer(np.arange(1, size + 1), shares)).max()

    (counts, deviation), (reference_counts, reference_deviation) = map(counts_and_deviation, (index, reference))
    assert deviation <= max(reference_deviation, len(weights) / 2)
    assert np.abs(counts[-1] - reference_counts[-1]).max() <= len(weights) / 2
    for k in range(len(weights)):  # each dataset's samples in order, none skipped
        np.testing.assert_array_equal(sample[index == k], np.arange(np.sum(index == k)))
    for short in (size // 2, 23, 1):  # a shorter blend is a prefix of the longer one, every position filled
        assert blending_indices(weights, short)[0].tolist() == index[:short].tolist()


def test_blended_samples_come_from_their_datasets(indexed):
    a = GPT2Dataset(indexed, np.arange(30), num_samples=60, seq_length=4, seed=0)
    b = GPT2Dataset(indexed, np.arange(30, 60), num_samples=20, seq_length=4, seed=0)
    blend = BlendedDataset([a, b], [0.75, 0.25])
    shares = np.bincount(blend.dataset_index, minlength=2) / len(blend)
    np.testing.assert_allclose(shares, [0.75, 0.25], atol=0.02)
    np.testing.assert_array_equal(blend[1], [a, b][int(blend.dataset_index[1])][int(blend.dataset_sample_index[1])])


def test_training_blends_several_datasets_by_weight_in_train_and_valid(indexed, tmp_path):
    """Two datasets (documents 0-29 and 30-59 of the fixture, their tokens telling which), 3:1."""
    halves = []
    for half, documents in enumerate([range(30), range(30, 60)]):
        parts = []
        for d in documents:
            np.asarray(indexed[d]).tofile(tmp_path / f"h{d}.bin")
            parts.append((tmp_path / f"h{d}.bin", np.array([len(indexed[d])])))
        merge_parts(tmp_path / f"half{half}", parts, np.dtype(np.int32))
        halves.append({"prefix": str(tmp_path / f"half{half}"), "split_prefixes": {}, "weight": [0.75, 0.25][half]})
    sets = build_datasets(halves, "8,2,0", {"train": 400, "valid": 40}, seq_length=4, seed=0, cache_dir=tmp_path)
    for name, size in (("train", 400), ("valid", 40)):
        blend = sets[name]
        assert isinstance(blend, BlendedDataset) and len(blend) >= size
        from_first = [int(t) // 1000 < 30 for i in range(size) for t in blend[i][:1]]
        assert abs(np.mean(from_first) - 0.75) < 0.03, name
    valid_docs = {int(t) // 1000 for i in range(40) for t in sets["valid"][i]}
    assert valid_docs <= set(range(24, 30)) | set(range(54, 60))  # each dataset's own validation part


def test_bad_requests_are_clear(indexed):
    with pytest.raises(ValueError, match="no documents"):
        GPT2Dataset(indexed, np.arange(0), num_samples=1, seq_length=4, seed=0)
    with pytest.raises(ValueError, match="split must look like"):
        split_boundaries("a,b", 10)
