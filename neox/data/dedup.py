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
import shutil
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import ray
from pydantic import Field, Strict
from rensa import RMinHash

from neox.data.jsonl import Rejects, list_shards, merge_rejects, read_lines, read_shard, write_lines
from neox.errors import DataError
from neox.pipeline.configfile import NonNegative, Positive, section
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, run_stage
from neox.runtime.ray_cluster import ensure_ray, run_ordered

STAGE = "dedup"
CODE_VERSION = "1"


@section
class DedupConfig:
    """`data.dedup`: exact duplicates by normalised text, near duplicates by MinHash LSH over word n-grams."""

    ngram: Positive = 5
    """Words per shingle."""
    num_perm: Positive = 128
    """MinHash permutations."""
    bands: Positive = 16
    """LSH bands."""
    rows: Positive = 8
    """Rows per LSH band (bands x rows <= num_perm)."""
    threshold: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.8
    """Minimum estimated Jaccard similarity of a near duplicate, in (0, 1]."""
    seed: NonNegative = 1
    """Seed of the MinHash permutations."""

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) exceeds num_perm ({self.num_perm})")


def normalize(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, no leading/trailing space."""
    if not unicodedata.is_normalized("NFC", text):  # a cheap check; most text already is
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def shingles(normalized: str, n: int) -> list[str]:
    """Lower-cased word n-grams of normalized text; a document shorter than n words is one shingle."""
    words = normalized.lower().split(" ")
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(gram) for gram in zip(*(words[i:] for i in range(n)), strict=False)]


def sign_shard(shard: Path, cfg: DedupConfig, rejects_path: Path) -> dict[str, Any]:
    """Per document of one shard: its location, set name, path (if any), exact hash and MinHash signature.
    Rejected lines go to rejects_path."""
    rejects = Rejects(rejects_path)
    lines, sets, paths, exact, shingle_sets, sizes = [], [], [], [], [], []
    for doc in read_shard(shard, rejects):
        lines.append(doc.line)
        sets.append(doc.set_name)
        paths.append(doc.meta.get("path"))
        normalized = normalize(doc.text)
        exact.append(hashlib.sha256(normalized.encode()).digest()[:16])
        shingle_sets.append(shingles(normalized, cfg.ngram))
        sizes.append(len(doc.text.encode()))
    rejects.close()
    signatures = np.zeros((len(lines), cfg.num_perm), dtype=np.uint32)
    if lines:
        signatures[:] = RMinHash.digest_matrix_from_token_sets(shingle_sets, cfg.num_perm, cfg.seed).to_rows()
    return {
        "shard": shard.name,
        "lines": lines,
        "sets": sets,
        "paths": paths,
        "exact": exact,
        "signatures": signatures,
        "bytes": sum(sizes),
        "rejects": str(rejects_path),
        "reject_counts": rejects.counts,
    }


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


def write_kept(shard: Path, out: Path, keep_lines: set[int]) -> int:
    """Copy the kept lines of a shard, byte for byte (they were parsed and checked when signed)."""
    return write_lines(out, (line for number, line in enumerate(read_lines(shard), start=1) if number in keep_lines))


def dedup_shards(
    input_dir: str | Path,
    work_root: str | Path,
    cfg: DedupConfig = DedupConfig(),
    workers: int | None = None,
    ray_address: str | None = None,
) -> StageResult:
    """Run (or reuse) the dedup stage; its output is a folder of deduplicated shards."""
    shards = list_shards(input_dir)

    def body(run: StageRun) -> None:
        ensure_ray(ray_address)
        signer = ray.remote(num_cpus=1)(sign_shard)
        parts = run.tmp / ".rejects"  # each shard's rejected lines, merged into rejects.jsonl below
        parts.mkdir()
        calls = [(signer, (s, cfg, parts / s.name)) for s in shards]
        signed = run_ordered(calls, workers, "dedup: sign", "shard")
        write_kept_documents(signed, shards, run, cfg, workers)
        shutil.rmtree(parts)

    inputs = {"shards": input_fingerprint(input_dir)}
    return run_stage(work_root, STAGE, CODE_VERSION, dataclasses.asdict(cfg), inputs, body)


def write_kept_documents(
    signed: list[dict[str, Any]], shards: list[Path], run: StageRun, cfg: DedupConfig, workers: int | None
) -> None:
    """Cluster the signed documents and write the kept ones into the stage's output, with its stats."""
    ids = [(r["shard"], line) for r in signed for line in r["lines"]]
    if not ids:
        raise DataError(f"no documents in {shards[0].parent}: every line was empty or rejected")
    sets = [s for r in signed for s in r["sets"]]
    paths = [p for r in signed for p in r["paths"]]
    uf, exact_members = cluster(
        [e for r in signed for e in r["exact"]], np.concatenate([r["signatures"] for r in signed]), cfg
    )

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

    writer = ray.remote(num_cpus=1)(write_kept)
    calls = [(writer, (s, run.tmp / s.name, keep_by_shard[s.name])) for s in shards]
    written = sum(run_ordered(calls, workers, "dedup: write", "shard"))
    reject_counts = merge_rejects([(Path(r["rejects"]), r["reject_counts"]) for r in signed], run.tmp / "rejects.jsonl")
    kept = sum(len(lines) for lines in keep_by_shard.values())
    if written != kept:  # the shards changed under us between the two passes
        raise DataError(f"wrote {written} documents, expected {kept}; was the input modified?")
    kept_sets = Counter(sets[i] for i, root in enumerate(roots) if root == i)
    run.stats.update(
        documents_in=len(ids),
        documents_out=kept,
        bytes_in=sum(r["bytes"] for r in signed),
        exact_duplicates=len(exact_members),
        near_duplicates=len(removed) - len(exact_members),
        rejects=reject_counts,
        per_set={name: {"in": count, "out": kept_sets.get(name, 0)} for name, count in sorted(Counter(sets).items())},
        clusters=[
            {"kept": describe(root), "dropped": [describe(i) for i in dropped]}
            for root, dropped in sorted(members.items())
        ],
    )
