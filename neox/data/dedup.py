"""The dedup stage: exact and near-duplicate removal over Pile-format shards.

- Exact: sha256 of the NFC-normalised, whitespace-collapsed text.
- Near: MinHash (rensa, bulk) over lower-cased word n-gram shingles; LSH banding proposes candidate pairs
  (bands x rows; the defaults, 16 x 8 of 128 permutations, catch pairs at Jaccard 0.8 with ~95% and 0.85 with
  ~99% probability per pair); a candidate joins a cluster only if its signature-estimated Jaccard reaches
  `threshold`. Clusters are merged by union-find and keep their first document in shard/line order.

Shards are signed in parallel as Ray tasks and written back (kept documents only, same shard names) as Ray
tasks; clustering happens in the driver on the signatures. Every decision depends only on the documents and
their order, so the output is the same whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import ray
from rensa import RMinHash

from neox.data.jsonl import Rejects, list_shards, merge_rejects, read_shard, write_shard
from neox.ray_runtime import ensure_ray, run_ordered
from neox.stage import find_verified, input_fingerprint, publish_stage, stage_key, stage_output

STAGE = "dedup"
CODE_VERSION = "1"
_WHITESPACE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    ngram: int = 5  # words per shingle
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    threshold: float = 0.8  # minimum estimated Jaccard for a near-duplicate
    seed: int = 1

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError("ngram, bands and rows must be at least 1")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) exceeds num_perm ({self.num_perm})")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")


def normalize(text: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def shingles(text: str, n: int) -> list[str]:
    """Lower-cased word n-grams; a document shorter than n words is one shingle."""
    words = normalize(text).lower().split(" ")
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def sign_shard(shard: Path, cfg: DedupConfig) -> dict[str, Any]:
    """Per document of one shard: its location, set name, path (if any), exact hash and MinHash signature."""
    rejects = Rejects()
    lines, sets, paths, exact, shingle_sets, sizes = [], [], [], [], [], []
    for doc in read_shard(shard, rejects):
        lines.append(doc.line)
        sets.append(doc.set_name)
        paths.append(doc.meta.get("path"))
        exact.append(hashlib.sha256(normalize(doc.text).encode()).digest()[:16])
        shingle_sets.append(shingles(doc.text, cfg.ngram))
        sizes.append(len(doc.text.encode()))
    signatures = np.zeros((len(lines), cfg.num_perm), dtype=np.uint32)
    if lines:
        signatures[:] = RMinHash.digest_matrix_from_token_sets(shingle_sets, cfg.num_perm, cfg.seed).to_rows()
    return {"shard": shard.name, "lines": lines, "sets": sets, "paths": paths, "exact": exact,
            "signatures": signatures, "bytes": sum(sizes), "rejects": rejects.counts}


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the smallest member (so clusters keep their first document)."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def cluster(exact: list[bytes], signatures: np.ndarray, cfg: DedupConfig) -> tuple[UnionFind, set[int]]:
    """Union-find over documents 0..n-1 (global order); returns it and the documents joined by exact hash."""
    n = len(exact)
    uf = UnionFind(n)
    first_with_hash: dict[bytes, int] = {}
    exact_members: set[int] = set()
    for i, digest in enumerate(exact):
        if digest in first_with_hash:
            uf.union(first_with_hash[digest], i)
            exact_members.add(i)
        else:
            first_with_hash[digest] = i
    for band in range(cfg.bands):
        columns = signatures[:, band * cfg.rows : (band + 1) * cfg.rows]
        buckets: dict[bytes, int] = {}
        for i in range(n):
            key = columns[i].tobytes()
            first = buckets.setdefault(key, i)
            if first != i and uf.find(first) != uf.find(i):
                if np.mean(signatures[first] == signatures[i]) >= cfg.threshold:
                    uf.union(first, i)
    return uf, exact_members


def write_kept(shard: Path, out: Path, keep_lines: set[int], rejects_path: Path) -> dict[str, Any]:
    rejects = Rejects(rejects_path)
    try:
        count = write_shard(out, ({"text": d.text, "meta": d.meta} for d in read_shard(shard, rejects) if d.line in keep_lines))
    finally:
        rejects.close()
    return {"written": count, "rejects": str(rejects_path), "reject_counts": rejects.counts}


def dedup_shards(
    input_dir: str | Path, work_root: str | Path, cfg: DedupConfig = DedupConfig(), workers: int | None = None,
    ray_address: str | None = None,
) -> Path:
    """Run (or reuse) the dedup stage; returns its output directory of deduplicated shards."""
    shards = list_shards(input_dir)
    inputs = {"shards": input_fingerprint(input_dir)}
    config = dataclasses.asdict(cfg)
    key = stage_key(STAGE, CODE_VERSION, config, inputs)
    if find_verified(work_root, STAGE, key) is not None:
        return stage_output(work_root, STAGE, key)

    ensure_ray(ray_address)
    signed = run_ordered([(ray.remote(num_cpus=1)(sign_shard), (s, cfg)) for s in shards], workers, "dedup: sign", "shard")
    ids = [(r["shard"], line) for r in signed for line in r["lines"]]
    if not ids:
        raise ValueError(f"no documents in {input_dir}: every line was empty or rejected")
    sets = [s for r in signed for s in r["sets"]]
    paths = [p for r in signed for p in r["paths"]]
    uf, exact_members = cluster([e for r in signed for e in r["exact"]], np.concatenate([r["signatures"] for r in signed]), cfg)

    roots = [uf.find(i) for i in range(len(ids))]
    removed = [i for i, root in enumerate(roots) if root != i]
    members: dict[int, list[int]] = defaultdict(list)
    for i in removed:
        members[roots[i]].append(i)
    keep_by_shard: dict[str, set[int]] = defaultdict(set)
    for i, root in enumerate(roots):
        if root == i:
            keep_by_shard[ids[i][0]].add(ids[i][1])

    def describe(i: int) -> dict[str, Any]:
        entry = {"id": f"{ids[i][0]}:{ids[i][1]}", "set": sets[i]}
        return entry | ({"path": paths[i]} if paths[i] else {})

    with publish_stage(work_root, STAGE, CODE_VERSION, config, inputs) as run:
        writer = ray.remote(num_cpus=1)(write_kept)
        calls = [(writer, (s, run.tmp / s.name, keep_by_shard[s.name], run.tmp / f".{s.name}.rejects")) for s in shards]
        written = run_ordered(calls, workers, "dedup: write", "shard")
        reject_counts = merge_rejects([(Path(w["rejects"]), w["reject_counts"]) for w in written], run.tmp / "rejects.jsonl")
        kept = sum(len(lines) for lines in keep_by_shard.values())
        if sum(w["written"] for w in written) != kept:  # the shards changed under us between the two passes
            raise RuntimeError(f"wrote {sum(w['written'] for w in written)} documents, expected {kept}; was the input modified?")
        kept_sets = Counter(sets[i] for i, root in enumerate(roots) if root == i)
        run.stats.update(
            documents_in=len(ids),
            documents_out=kept,
            bytes_in=sum(r["bytes"] for r in signed),
            exact_duplicates=len(exact_members),
            near_duplicates=len(removed) - len(exact_members),
            rejects=reject_counts,
            per_set={name: {"in": count, "out": kept_sets.get(name, 0)} for name, count in sorted(Counter(sets).items())},
            clusters=[{"kept": describe(root), "dropped": [describe(i) for i in dropped]} for root, dropped in sorted(members.items())],
        )
    return stage_output(work_root, STAGE, key)
