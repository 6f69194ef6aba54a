"""Training samples with GPT-NeoX's `GPT2Dataset` semantics, so a run here sees the samples gpt-neox would.

- Splits are contiguous document ranges cut by a `split` string such as "969,30,1".
- For `num_samples` samples of `seq_length + 1` tokens: `np.random.RandomState(seed)` shuffles the split's
  documents tiled over as many epochs as needed (doc_idx); windows are packed across document boundaries
  (sample_idx, consecutive windows share one token); the same RNG then shuffles the sample order (shuffle_idx).
- Splits may instead be named (a dataset per split, `neox.data.splits`), as gpt-neox's train/valid/test paths.
- Several datasets blend by weights (gpt-neox's train_data_weights) with a stride rule that keeps each dataset
  within half a sample per dataset of its share, built vectorised (`blending_indices`).

Sample `i` is a pure function of (data, seed, seq_length, num_samples, i), so resuming at step k needs no
loader state. The index arrays are cached as `.npy` under a hash of their inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from neox.data.indexed import IndexedDataset
from neox.data.splits import SPLITS
from neox.errors import ConfigError, DataError

INDEX_VERSION = "1"


def split_weights(split: str) -> list[float]:
    """The train, valid and test weights of a gpt-neox `split` ('969,30,1'; missing parts weigh 0)."""
    separator = "," if "," in split else "/" if "/" in split else None
    try:
        weights = [float(s) for s in (split.split(separator) if separator else [split])]
    except ValueError:
        raise ConfigError(f"split must look like '969,30,1', got {split!r}") from None
    weights = (weights + [0.0, 0.0])[:3]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"split weights must be non-negative with a positive sum, got {split!r}")
    return weights


def split_boundaries(split: str, num_documents: int) -> list[int]:
    """gpt-neox's get_train_valid_test_split_: document index boundaries [0, a, b, num_documents]."""
    weights = split_weights(split)
    total = sum(weights)
    bounds = [0]
    for weight in weights:
        bounds.append(bounds[-1] + int(round(weight / total * float(num_documents))))
    diff = bounds[-1] - num_documents
    return [bounds[0]] + [b - diff for b in bounds[1:]]


def num_epochs(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    epochs, total = 0, 0
    while True:
        epochs += 1
        total += tokens_per_epoch
        # windows overlap by one token, hence the - 1
        if (total - 1) // seq_length >= num_samples:
            return epochs


def build_doc_idx(documents: np.ndarray, epochs: int, rng: np.random.RandomState) -> np.ndarray:
    doc_idx = np.tile(np.asarray(documents, dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    return doc_idx


def build_sample_idx(
    sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, epochs: int, tokens_per_epoch: int
) -> np.ndarray:
    """Row k: (position in doc_idx, offset in that document) of token k * seq_length of the doc_idx-ordered
    stream, where sample k starts and sample k-1 ends. gpt-neox computes this with a C++ loop over documents;
    a cumulative sum and a binary search give the same rows."""
    count = (epochs * tokens_per_epoch - 1) // seq_length
    ends = np.cumsum(sizes[doc_idx].astype(np.int64))
    positions = np.arange(count + 1, dtype=np.int64) * seq_length
    which = np.searchsorted(ends, positions, side="right")
    starts = ends[which] - sizes[doc_idx[which]]
    return np.stack([which, positions - starts], axis=1)


def build_shuffle_idx(size: int, rng: np.random.RandomState) -> np.ndarray:
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    shuffle_idx = np.arange(size, dtype=dtype)
    rng.shuffle(shuffle_idx)
    return shuffle_idx


class GPT2Dataset:
    """`num_samples` windows of seq_length + 1 tokens over `documents` of an indexed dataset."""

    def __init__(
        self,
        indexed: IndexedDataset,
        documents: np.ndarray,
        num_samples: int,
        seq_length: int,
        seed: int,
        cache_dir: str | Path | None = None,
    ):
        if len(documents) == 0:
            raise DataError("this split has no documents; adjust `split` or add data")
        if num_samples < 1 or seq_length < 1:
            raise ConfigError(f"num_samples and seq_length must be positive, got {num_samples}, {seq_length}")
        self.indexed, self.seq_length = indexed, seq_length
        arrays = None
        if cache_dir is not None:
            key = _index_key(indexed, documents, num_samples, seq_length, seed)
            paths = {name: Path(cache_dir) / f"{key}_{name}.npy" for name in ("doc_idx", "sample_idx", "shuffle_idx")}
            if all(p.exists() for p in paths.values()):
                arrays = {name: np.load(p, mmap_mode="r") for name, p in paths.items()}
        if arrays is None:
            arrays = _build_indices(indexed.sizes, documents, num_samples, seq_length, seed)
            if cache_dir is not None:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                for name, path in paths.items():
                    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # several ranks may build at once
                    np.save(tmp, arrays[name])
                    tmp.replace(path)
        self.doc_idx, self.sample_idx, self.shuffle_idx = arrays["doc_idx"], arrays["sample_idx"], arrays["shuffle_idx"]

    def __len__(self) -> int:
        return min(len(self.shuffle_idx), len(self.sample_idx) - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        """Tokens of sample i: seq_length + 1 ids (inputs are [:-1], labels [1:])."""
        j = int(self.shuffle_idx[i])
        (first, first_offset), (last, last_offset) = self.sample_idx[j], self.sample_idx[j + 1]
        if first == last:
            return self.indexed.get(
                int(self.doc_idx[first]), offset=int(first_offset), length=int(last_offset - first_offset + 1)
            ).astype(np.int64)
        pieces = [self.indexed.get(int(self.doc_idx[first]), offset=int(first_offset))]
        pieces += [self.indexed.get(int(self.doc_idx[k])) for k in range(first + 1, last)]
        pieces.append(self.indexed.get(int(self.doc_idx[last]), length=int(last_offset + 1)))
        return np.concatenate(pieces).astype(np.int64)


class PaddedDataset:
    """Supervised fine-tuning samples, one example per sequence: its tokens and labels (gpt-neox's label dataset,
    -100 where the loss does not score) cut to seq_length + 1 and padded with `pad_id`, labelled -100. Packing
    several examples into a sequence would let each attend to the ones before it; padding needs no attention mask
    (the causal mask already keeps real tokens from seeing the padding after them) at the cost of computing on
    the padding. Examples come in the order gpt-neox's doc_idx gives: the split's examples shuffled by
    `np.random.RandomState(seed)`, tiled over as many epochs as `num_samples` needs."""

    def __init__(
        self,
        indexed: IndexedDataset,
        labels: IndexedDataset,
        documents: np.ndarray,
        num_samples: int,
        seq_length: int,
        seed: int,
        pad_id: int,
    ):
        if len(documents) == 0:
            raise DataError("this split has no examples; adjust `split` or add data")
        if not np.array_equal(indexed.sizes, labels.sizes):
            raise DataError(f"{labels.prefix} does not hold one label per token of {indexed.prefix}")
        self.indexed, self.labels, self.seq_length, self.pad_id = indexed, labels, seq_length, pad_id
        epochs = math.ceil(num_samples / len(documents))
        self.doc_idx = build_doc_idx(documents, epochs, np.random.RandomState(seed=seed))

    def __len__(self) -> int:
        return len(self.doc_idx)

    def __getitem__(self, i: int) -> np.ndarray:
        """Tokens and labels of sample i, shape (2, seq_length + 1) (inputs are [0, :-1], targets [1, 1:])."""
        document = int(self.doc_idx[i])
        length = min(int(self.indexed.sizes[document]), self.seq_length + 1)
        sample = np.full((2, self.seq_length + 1), IGNORE_INDEX, dtype=np.int64)
        sample[0] = self.pad_id
        sample[0, :length] = self.indexed.get(document, length=length)
        sample[1, :length] = self.labels.get(document, length=length)
        return sample


IGNORE_INDEX = -100  # a label the loss does not score (PyTorch's default ignore_index, gpt-neox's label value)


def inputs_and_targets(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sample's model inputs and next-token targets: from a window of tokens (every next token scored), or from a
    PaddedDataset's tokens and labels."""
    if sample.ndim == 1:
        return sample[:-1], sample[1:]
    return sample[0, :-1], sample[1, 1:]


def _build_indices(
    sizes: np.ndarray, documents: np.ndarray, num_samples: int, seq_length: int, seed: int
) -> dict[str, np.ndarray]:
    tokens_per_epoch = int(sizes[documents].astype(np.int64).sum())
    epochs = num_epochs(tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed=seed)
    doc_idx = build_doc_idx(documents, epochs, rng)
    sample_idx = build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens_per_epoch)
    shuffle_idx = build_shuffle_idx(len(sample_idx) - 1, rng)
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx}


def _index_key(indexed: IndexedDataset, documents: np.ndarray, num_samples: int, seq_length: int, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([INDEX_VERSION, num_samples, seq_length, seed, str(indexed.prefix.name)]).encode())
    digest.update(np.ascontiguousarray(indexed.sizes).tobytes())
    digest.update(np.ascontiguousarray(documents, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def build_split_datasets(
    data: str | Path | dict[str, str | Path],
    split: str,
    num_samples: dict[str, int],
    seq_length: int,
    seed: int,
    cache_dir: str | Path | None = None,
    labels: str | Path | None = None,
    pad_id: int = 0,
) -> dict[str, GPT2Dataset | PaddedDataset]:
    """The train/valid/test datasets asked for in num_samples: of one `.bin/.idx` prefix cut by the positional
    `split`, or, given named splits (split -> prefix, as gpt-neox's train/valid/test_data_paths), each whole.
    With a label dataset (`labels`, fine-tuning data), padded examples cut by the positional split."""
    if labels is not None:
        indexed, label_set = IndexedDataset(data), IndexedDataset(labels)
        bounds = split_boundaries(split, len(indexed))
        return {
            name: PaddedDataset(
                indexed,
                label_set,
                np.arange(bounds[i], bounds[i + 1], dtype=np.int32),
                num_samples[name],
                seq_length,
                seed,
                pad_id,
            )
            for i, name in enumerate(SPLITS)
            if num_samples.get(name)
        }
    if isinstance(data, dict):
        named = {name: IndexedDataset(prefix) for name, prefix in data.items()}
        parts = {name: (indexed, np.arange(len(indexed), dtype=np.int32)) for name, indexed in named.items()}
    else:
        indexed = IndexedDataset(data)
        bounds = split_boundaries(split, len(indexed))
        parts = {name: (indexed, np.arange(bounds[i], bounds[i + 1], dtype=np.int32)) for i, name in enumerate(SPLITS)}
    return {
        name: GPT2Dataset(*parts[name], num_samples[name], seq_length, seed, cache_dir)
        for name in SPLITS
        if num_samples.get(name) and name in parts
    }


BLEND_WEIGHT_SCALE = 1 << 24  # weights are rounded to multiples of 2^-24 of their sum, so the rule is exact in int64
BLEND_BLOCK = 1 << 20


def build_datasets(
    sources: list[dict[str, Any]],
    split: str,
    num_samples: dict[str, int],
    seq_length: int,
    seed: int,
    cache_dir: str | Path | None = None,
) -> dict[str, GPT2Dataset | BlendedDataset]:
    """The train/valid/test datasets of one tokenized dataset, or of several blended by weight as gpt-neox blends
    train_data_paths: each gives its weight's share of the samples (and 0.5% more, as gpt-neox asks of each), and
    the blend interleaves them. A source is {"prefix", "split_prefixes" (its named splits, if any), "weight"}, and for
    fine-tuning data "label_prefix" and "pad_id"."""

    def of(source: dict[str, Any], wanted: dict[str, int]) -> dict[str, GPT2Dataset]:
        data = source["split_prefixes"] or source["prefix"]
        labels, pad_id = source.get("label_prefix"), source.get("pad_id", 0)
        return build_split_datasets(data, split, wanted, seq_length, seed, cache_dir, labels, pad_id)

    if len(sources) == 1:
        return of(sources[0], num_samples)
    parts = [of(s, {k: math.ceil(n * s["weight"] * 1.005) for k, n in num_samples.items()}) for s in sources]
    out: dict[str, GPT2Dataset | BlendedDataset] = {}
    for name in num_samples:
        members = [(part[name], s["weight"]) for part, s in zip(parts, sources, strict=True) if name in part]
        if members:
            out[name] = BlendedDataset([d for d, _ in members], [w for _, w in members])
    return out


def blending_indices(weights: list[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `size` samples, which dataset and which of its samples. Dataset k's j-th sample comes at
    priority (j + 1/2) / w_k, lower first, ties to the lower dataset (a stride schedule): at every point each
    dataset's count is within half a sample per dataset of its share (gpt-neox's greedy build_blending_indices
    stays within about one, in another order; tests compare the two). The position of each sample is counted, not
    searched for: the samples of dataset l ahead of (k, j) are those with (2j' + 1) w_k < (2j + 1) w_l, so building
    the index is a few vectorised passes: ~4 s for Pythia's 146M samples on one core (bench/blend.py), where a
    per-sample Python loop takes a minute and a numpy one 6."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or len(w) > 254 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ConfigError(f"blend weights must be 1 to 254 non-negative numbers with a positive sum, got {weights}")
    scaled = np.rint(w / w.sum() * BLEND_WEIGHT_SCALE).astype(np.int64)
    if not scaled.any():
        raise ConfigError(f"blend weights {weights}: every weight is below 2^-24 of their sum")
    unset = 255
    dataset_index = np.full(size, unset, dtype=np.uint8)
    dataset_sample_index = np.zeros(size, dtype=np.int64)
    for k in np.flatnonzero(scaled):
        # more than dataset k can have among `size`: its share, and up to half a sample per other dataset ahead of it
        most = (size + len(w)) * int(scaled[k]) // int(scaled.sum()) + 2
        for start in range(0, most, BLEND_BLOCK):  # blocks that stay in cache
            j = np.arange(start, min(most, start + BLEND_BLOCK), dtype=np.int64)
            position = j.copy()
            ahead, count = np.empty_like(j), np.empty_like(j)
            for other in np.flatnonzero(scaled):
                if other == k:
                    continue
                # dataset `other`'s samples j' ahead of (k, j): j' < ahead / (2 w_k), or <= on a tie if other < k
                np.multiply(j, 2 * scaled[other], out=ahead)
                ahead += scaled[other] - scaled[k]
                np.floor_divide(ahead, 2 * scaled[k], out=count)
                if other < k:
                    count += 1
                else:  # a strict bound: the ceiling of the quotient
                    count += (count * 2 * scaled[k]) != ahead
                np.maximum(count, 0, out=count)
                position += count
            kept = position < size
            dataset_index[position[kept]] = k
            dataset_sample_index[position[kept]] = j[kept]
    assert not np.any(dataset_index == unset), "the blend order left a position empty"  # the bound above is wrong
    return dataset_index, dataset_sample_index


class BlendedDataset:
    """Several datasets mixed by weights (gpt-neox's BlendableDataset)."""

    def __init__(self, datasets: list[GPT2Dataset], weights: list[float]):
        if len(datasets) != len(weights):
            raise ConfigError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = datasets
        self.size = sum(len(d) for d in datasets)
        self.dataset_index, self.dataset_sample_index = blending_indices(weights, self.size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> np.ndarray:
        dataset = self.datasets[int(self.dataset_index[i])]
        return dataset[int(self.dataset_sample_index[i]) % len(dataset)]
