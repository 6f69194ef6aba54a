"""Named splits: validation and test shards travel from the sources through dedup (which keeps their copy of a
duplicate and drops the training one) and tokenize (a dataset per split) to training and the eval-data stage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from neox.data.dataset import build_split_datasets
from neox.data.download import Source, pile_catalog, source_set
from neox.data.indexed import IndexedDataset
from neox.data.jsonl import Rejects, list_shards, read_shard, write_shard
from neox.data.prepare import prepare_data
from neox.data.splits import SPLITS_FILE, held_out_first, read_splits
from neox.data.tokenize import data_prefix, named_split_prefixes
from neox.data.tokenizer import load_tokenizer, train_bpe
from neox.errors import DataError
from neox.eval.config import EvalDataConfig
from neox.eval.data import HELDOUT_FILE, eval_data_stage
from neox.pipeline.stage import read_manifest, verify_output

WORDS = ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 6)) for i in range(5000)]


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 120)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two training shards, a validation and a test shard; 5 validation and 7 test documents also appear in the
    training shards (whitespace changed), and one training document appears twice in training."""
    rng = random.Random(3)
    valid, test, train = [text(rng) for _ in range(20)], [text(rng) for _ in range(30)], [text(rng) for _ in range(200)]
    leaked = valid[:5] + test[:7] + [train[0]]
    train = [*train[:100], *("  " + t + "\n" for t in leaked), *train[100:]]
    folder = tmp_path_factory.mktemp("named")
    for name, docs in [("a-train.jsonl.zst", train[::2]), ("b-train.jsonl.zst", train[1::2])]:
        write_shard(folder / name, ({"text": t, "meta": {"pile_set_name": "Train"}} for t in docs))
    write_shard(folder / "val.jsonl.zst", ({"text": t, "meta": {"pile_set_name": "Valid"}} for t in valid))
    write_shard(folder / "test.jsonl.zst", ({"text": t, "meta": {"pile_set_name": "Test"}} for t in test))
    return folder


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory, ray_local):
    work = tmp_path_factory.mktemp("work")
    section = {
        "sources": [str(corpus / "a-train.jsonl.zst"), str(corpus / "b-train.jsonl.zst")],
        "valid_sources": [str(corpus / "val.jsonl.zst")],
        "test_sources": [str(corpus / "test.jsonl.zst")],
        "tokenizer": {"vocab_size": 600},
        "chunk_mb": 1,
    }
    return work, prepare_data(section, work)


def stage(work, name):
    return next(p for p in (work / name).iterdir() if p.is_dir() and not p.name.startswith("."))


def test_dedup_keeps_the_held_out_copy_and_drops_the_training_one(prepared):
    work, _ = prepared
    downloaded, deduped = stage(work, "download"), stage(work, "dedup")
    assert read_splits(downloaded) == read_splits(deduped) == {"val.jsonl.zst": "valid", "test.jsonl.zst": "test"}
    stats = verify_output(deduped)["stats"]
    assert stats["decontaminated"] == 12 and stats["documents_in"] - stats["documents_out"] == 13
    assert stats["per_set"]["Valid"] == {"in": 20, "out": 20} and stats["per_set"]["Test"] == {"in": 30, "out": 30}
    assert stats["per_set"]["Train"] == {"in": 213, "out": 200}


def test_tokenize_writes_a_dataset_per_split_and_the_tokenizer_never_saw_held_out_text(prepared):
    _, tokenized = prepared
    prefixes = named_split_prefixes(tokenized)
    assert {k: v.name for k, v in prefixes.items()} == {
        "train": "corpus_text_document",
        "valid": "corpus_valid_text_document",
        "test": "corpus_test_text_document",
    }
    assert data_prefix(tokenized) == prefixes["train"]
    sizes = {split: len(IndexedDataset(prefix)) for split, prefix in prefixes.items()}
    assert sizes == {"train": 200, "valid": 20, "test": 30}
    assert read_manifest(tokenized)["stats"]["splits"]["test"]["documents"] == 30
    deduped = stage(prepared[0], "dedup")
    training_text = (
        d.text for s in list_shards(deduped) if s.name not in read_splits(deduped) for d in read_shard(s, Rejects())
    )
    expected = train_bpe(training_text, 600, show_progress=False)
    assert load_tokenizer(tokenized / "tokenizer.json").get_vocab() == expected.get_vocab()


def test_training_validates_on_the_validation_set_and_eval_data_reads_the_test_set(prepared, tmp_path):
    work, tokenized = prepared
    prefixes = {split: str(p) for split, p in named_split_prefixes(tokenized).items()}
    datasets = build_split_datasets(prefixes, "969,30,1", {"train": 50, "valid": 10}, 32, seed=1, cache_dir=tmp_path)
    valid_tokens = IndexedDataset(prefixes["valid"]).tokens
    assert set(np.concatenate([datasets["valid"][i] for i in range(10)])) <= set(valid_tokens)
    out = eval_data_stage(tokenized, work, EvalDataConfig(part="test", split="969,30,1")).path
    stats = verify_output(out)["stats"]
    assert stats["dataset"] == "corpus_test_text_document" and stats["document_range"] == [0, 30]
    held_out = {json.loads(line)["text"].strip() for line in (out / HELDOUT_FILE).read_text().splitlines()}
    originals = {" ".join(d.text.split()) for d in read_shard(stage(work, "dedup") / "test.jsonl.zst", Rejects())}
    assert {" ".join(t.split()) for t in held_out} <= originals


def test_the_pile_catalog_names_its_splits_and_training_sources_keep_their_keys():
    catalog = {s.name: s.split for s in pile_catalog("https://mirror/pile")}
    assert catalog["val.jsonl.zst"] == "valid" and catalog["test.jsonl.zst"] == "test"
    assert {catalog[f"train-{i:02d}.jsonl.zst"] for i in range(30)} == {"train"}
    # a training source hashes as it did before sources had splits: existing download outputs stay valid
    assert source_set([Source("https://h/a.jsonl.zst")]) == {
        "sources": [{"url": "https://h/a.jsonl.zst", "name": "a.jsonl.zst", "sha256": None, "size": None}]
    }
    shards = [Path(name) for name in ["a-train", "test", "val", "b-train"]]
    ordered = held_out_first(shards, {"val": "valid", "test": "test"})  # the order dedup decides which copy stays in
    assert [s.name for s in ordered] == ["test", "val", "a-train", "b-train"]


def test_a_broken_or_wrong_splits_file_is_a_clear_error(tmp_path, ray_local, corpus_tokenizer):
    from neox.data.dedup import dedup_shards

    write_shard(tmp_path / "00.jsonl.zst", [{"text": "a document"}])
    for content, message in [
        ("{not json", "not valid JSON"),
        ('{"validation": ["00.jsonl.zst"]}', "must map 'valid' and/or 'test'"),
        ('{"valid": ["00.jsonl.zst"], "test": ["00.jsonl.zst"]}', "both valid and test"),
        ('{"test": ["99.jsonl.zst"]}', "names shards that are not in"),
    ]:
        (tmp_path / SPLITS_FILE).write_text(content)
        with pytest.raises(DataError, match=message):
            dedup_shards(tmp_path, tmp_path / "work")
    assert [s.name for s in list_shards(tmp_path)] == ["00.jsonl.zst"]  # splits.json is no shard
