"""The dedup stage: planted duplicates found, unrelated documents kept, known clusters in the sample corpus."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import numpy as np
import pytest
from rensa import RMinHash

from neox.data.dedup import DedupConfig, dedup_shards, normalize, shingles
from neox.data.jsonl import Rejects, list_shards, read_lines, read_shard, write_lines, write_shard
from neox.pipeline.stage import verify_output

WORDS = [f"w{i}" for i in range(20000)]


def jaccard(a: str, b: str) -> float:
    x, y = set(shingles(normalize(a), 5)), set(shingles(normalize(b), 5))
    return len(x & y) / len(x | y)


def near_copy(text: str, rng: random.Random) -> str:
    """A few words changed or inserted, whitespace and case changed, Jaccard with the original kept >= 0.85."""
    words = text.split()
    for _ in range(2):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    words.insert(rng.randrange(len(words)), rng.choice(WORDS))
    out = "  ".join(w.upper() if rng.random() < 0.1 else w for w in words)
    return out.replace("  ", "\n", 5)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """400 unrelated documents; 40 of them get an exact copy (whitespace-changed) and 40 a near copy."""
    rng = random.Random(0)
    originals = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(300, 600))) for _ in range(400)]
    docs = [{"text": t, "group": i} for i, t in enumerate(originals)]
    for i in range(40):
        docs.append({"text": "\t" + originals[i].replace(" ", "   ", 3) + "\n", "group": i})
    for i in range(40, 80):
        copy = near_copy(originals[i], rng)
        assert jaccard(copy, originals[i]) >= 0.85
        docs.append({"text": copy, "group": i})
    rng.shuffle(docs)
    out = tmp_path_factory.mktemp("planted")
    for s in range(4):
        write_shard(
            out / f"{s:02d}.jsonl.zst",
            ({"text": d["text"], "meta": {"pile_set_name": "Synthetic", "group": d["group"]}} for d in docs[s::4]),
        )
    return out


def test_planted_duplicates_are_removed_and_nothing_else(tmp_path, ray_local, planted):
    out = dedup_shards(planted, tmp_path / "work", workers=2).path
    kept = Counter(d.meta["group"] for shard in list_shards(out) for d in read_shard(shard, Rejects()))
    sizes = Counter(d.meta["group"] for shard in list_shards(planted) for d in read_shard(shard, Rejects()))
    removed = sizes - kept
    # a removal is right when its group still has a member kept: it was a planted copy (or its original)
    right = sum(min(removed[g], sizes[g] - 1) for g in removed)
    recall, precision = right / 80, right / max(sum(removed.values()), 1)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    assert set(kept) == set(range(400))  # no unrelated document lost
    kept = list(kept.elements())
    stats = verify_output(out)["stats"]
    assert stats["documents_in"] == 480 and stats["documents_out"] == len(kept)
    assert stats["exact_duplicates"] == 40 and stats["near_duplicates"] == 480 - len(kept) - 40
    assert stats["per_set"] == {"Synthetic": {"in": 480, "out": len(kept)}}
    assert [s.name for s in list_shards(out)] == [s.name for s in list_shards(planted)]  # clusters are no shard
    clusters = read_clusters(out)
    assert stats["clusters"] == len(clusters) == 480 - len(kept) and stats["largest_cluster"] == 2  # pairs here


def read_clusters(output) -> list[dict]:
    return [json.loads(line) for line in read_lines(output / "clusters.jsonl.zst")]


def reference_dedup(corpus, cfg: DedupConfig) -> set[tuple[str, int]]:
    """The documents a straightforward single-process LSH drops: every signature in memory, each document
    compared with the first of each bucket it falls into, clusters merged by union-find."""
    docs = [d for shard in list_shards(corpus) for d in read_shard(shard, Rejects())]
    texts = [normalize(d.text) for d in docs]
    sigs = np.array(
        RMinHash.digest_matrix_from_token_sets(
            [shingles(t, cfg.ngram) for t in texts], cfg.num_perm, cfg.seed
        ).to_rows()
    )
    parent = list(range(len(docs)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    def join(a, b):
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)

    buckets = [{} for _ in range(cfg.bands + 1)]
    for i, text in enumerate(texts):
        first = buckets[0].setdefault(hashlib.sha256(text.encode()).digest(), i)
        if first != i:
            join(first, i)
        for band in range(cfg.bands):
            first = buckets[band + 1].setdefault(sigs[i, band * cfg.rows : (band + 1) * cfg.rows].tobytes(), i)
            if first != i and np.mean(sigs[first] == sigs[i]) >= cfg.threshold:
                join(first, i)
    return {(docs[i].shard, docs[i].line) for i in range(len(docs)) if root(i) != i}


def test_the_output_is_the_reference_lsh_whatever_the_workers_chunks_and_partitions(tmp_path, ray_local, planted):
    dropped = reference_dedup(planted, DedupConfig())
    docs = [d for shard in list_shards(planted) for d in read_shard(shard, Rejects())]
    expected = [(d.shard, d.text) for d in docs if (d.shard, d.line) not in dropped]
    assert len(docs) - len(expected) >= 76
    outputs = []
    # one worker, one partition, whole shards; then two of each and shards cut into ~50 KB chunks
    for name, workers, chunk_bytes in [("a", 1, 1 << 30), ("b", 2, 50_000)]:
        out = dedup_shards(planted, tmp_path / name, workers=workers, chunk_bytes=chunk_bytes).path
        outputs.append({p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"})
        assert [(d.shard, d.text) for shard in list_shards(out) for d in read_shard(shard, Rejects())] == expected
    assert outputs[0] == outputs[1]  # the shards and clusters.jsonl.zst, byte for byte
    assert verify_output(out)["stats"]["chunks"] >= 20


def test_sample_corpus_clusters_include_the_codepage_tables(tmp_path_factory, ray_local, sample_corpus):
    out = dedup_shards(sample_corpus, tmp_path_factory.mktemp("work")).path
    clusters = [{m.get("path") for m in [c["kept"], *c["dropped"]]} for c in read_clusters(out)]
    codepages = [c for c in clusters if sum(1 for p in c if p and p.startswith("encodings/cp")) >= 2]
    assert any({"encodings/cp037.py", "encodings/cp500.py"} <= c for c in codepages)
    assert len(codepages) >= 3


def test_bad_lines_are_kept_as_rejects_and_empty_input_is_refused(tmp_path, ray_local):
    (tmp_path / "in").mkdir()
    lines = [
        json.dumps({"text": "one two three"}),
        "{not json",
        json.dumps({"text": "one  two three"}),
        json.dumps({"meta": {}}),
        json.dumps({"text": "a lone \ud800 surrogate"}),
    ]
    write_lines(tmp_path / "in" / "00.jsonl.zst", (line.encode() + b"\n" for line in lines))
    out = dedup_shards(tmp_path / "in", tmp_path / "work").path
    stats = verify_output(out)["stats"]
    assert (stats["documents_in"], stats["documents_out"], stats["exact_duplicates"]) == (2, 1, 1)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["shard"], r["line"]) for r in rejects] == [("00.jsonl.zst", n) for n in (2, 4, 5)]
    assert "not valid Unicode: surrogates not allowed at character 7" in rejects[2]["reason"]
    assert sorted(p.name for p in (tmp_path / "work" / "dedup").iterdir()) == [out.name]  # no leftovers
    (tmp_path / "empty").mkdir()
    write_lines(tmp_path / "empty" / "00.jsonl.zst", [b"{broken\n"])
    with pytest.raises(ValueError, match="no documents"):
        dedup_shards(tmp_path / "empty", tmp_path / "work2")


def test_config_is_validated():
    with pytest.raises(ValueError, match="exceeds num_perm"):
        DedupConfig(bands=20, rows=8, num_perm=128)


def test_a_corpus_without_duplicates_comes_out_whole(tmp_path, ray_local):
    rng = random.Random(5)
    (tmp_path / "in").mkdir()
    write_shard(tmp_path / "in" / "00.jsonl", ({"text": " ".join(rng.choices(WORDS, k=80))} for _ in range(30)))
    out = dedup_shards(tmp_path / "in", tmp_path / "work", workers=2, chunk_bytes=500).path
    stats = verify_output(out)["stats"]
    assert stats["documents_in"] == stats["documents_out"] == 30 and stats["clusters"] == 0
    assert read_clusters(out) == [] and (out / "00.jsonl").read_bytes() == (tmp_path / "in" / "00.jsonl").read_bytes()
