"""The embedded corpus is real text, Pile-shaped, and deterministic."""

from __future__ import annotations

from collections import Counter

from neox.data.jsonl import Rejects, list_shards, read_shard
from neox.data.sample import build_sample_corpus


def test_sample_corpus_is_pile_format_and_about_32_mb(sample_corpus):
    docs = [d for shard in list_shards(sample_corpus) for d in read_shard(shard, Rejects())]
    sets = Counter(d.set_name for d in docs)
    assert set(sets) == {"Github", "Docs"} and sets["Docs"] > 50 and sets["Github"] > 1000
    assert 25e6 < sum(len(d.text.encode()) for d in docs) < 40e6
    paths = {d.meta["path"] for d in docs}
    assert {"encodings/cp1250.py", "json/__init__.py"} <= paths
    assert [p.name for p in list_shards(sample_corpus)] == [
        "00.jsonl.zst",
        "01.jsonl.zst",
        "02.jsonl.zst",
        "03.jsonl.zst",
    ]


def test_sample_corpus_is_deterministic(tmp_path, sample_corpus):
    build_sample_corpus(tmp_path, shards=4)
    for ours, reference in zip(list_shards(tmp_path), list_shards(sample_corpus), strict=True):
        assert ours.read_bytes() == reference.read_bytes()
