"""Benchmark: the dedup stage's throughput (MB of text per second per core) vs a datasketch baseline.

Same corpus (the sample corpus, ~32 MB), same shingles (word 5-grams), same 128 permutations, same LSH and
clustering. The baseline shingles in Python and signs each document with `datasketch.MinHash` on one core
(as most dedup scripts do); ours is the whole stage (read, sign with rensa's bulk MinHash in Ray tasks, LSH,
write the kept shards and the manifest), with Ray already started: on 1 core (the per-core comparison) and on
`--workers` cores (how it scales). How it grows with the corpus: bench/dedup_scale.py.

    .venv/bin/python bench/dedup.py [--workers 2]
"""

from __future__ import annotations

import os
import sys

# Run as a file, this folder leads sys.path and bench/tokenize.py would shadow the standard library's
# `tokenize` (imported by numpy and others): take the folder off the path before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from datasketch import MinHash  # noqa: E402

from neox.data.dedup import DedupConfig, dedup_shards, normalize, shingles  # noqa: E402
from neox.data.jsonl import Rejects, list_shards, read_shard  # noqa: E402
from neox.data.sample import build_sample_corpus  # noqa: E402
from neox.pipeline.stage import verify_output  # noqa: E402


def baseline(corpus: Path, cfg: DedupConfig) -> int:
    """Documents removed by: Python shingling + datasketch MinHash per document, then the same LSH."""
    import hashlib

    exact, signatures = [], []
    for shard in list_shards(corpus):
        for doc in read_shard(shard, Rejects()):
            normalized = normalize(doc.text)
            exact.append(hashlib.sha256(normalized.encode()).digest()[:16])
            minhash = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
            minhash.update_batch([s.encode() for s in shingles(normalized, cfg.ngram)])
            signatures.append(minhash.hashvalues.astype(np.uint32))
    return single_process_lsh(exact, np.stack(signatures), cfg)


def single_process_lsh(exact: list[bytes], signatures: np.ndarray, cfg: DedupConfig) -> int:
    """Documents removed by the usual in-memory LSH: a dict of buckets per band, each document compared with its
    bucket's first, clusters merged by union-find (what most dedup scripts, and this stage before issue 15, do)."""
    parent = list(range(len(exact)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)

    buckets: list[dict[bytes, int]] = [{} for _ in range(cfg.bands + 1)]
    for i, digest in enumerate(exact):
        if (first := buckets[0].setdefault(digest, i)) != i:
            join(first, i)
        for band in range(cfg.bands):
            key = signatures[i, band * cfg.rows : (band + 1) * cfg.rows].tobytes()
            if (first := buckets[band + 1].setdefault(key, i)) != i and root(first) != root(i):
                if np.mean(signatures[first] == signatures[i]) >= cfg.threshold:
                    join(first, i)
    return sum(1 for i in range(len(exact)) if root(i) != i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = DedupConfig()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        build_sample_corpus(corpus, shards=4)
        megabytes = sum(len(d.text.encode()) for s in list_shards(corpus) for d in read_shard(s, Rejects())) / 1e6

        started = time.perf_counter()
        base_removed = baseline(corpus, cfg)
        base_s = time.perf_counter() - started

        import ray

        from neox.runtime.ray_cluster import ensure_ray

        ensure_ray(num_cpus=args.workers)
        seconds = {}
        for workers in (1, args.workers):
            started = time.perf_counter()
            out = dedup_shards(corpus, Path(tmp) / f"work-{workers}", cfg, workers=workers).path
            seconds[workers] = time.perf_counter() - started
        ray.shutdown()
        stats = verify_output(out)["stats"]
        ours_removed = stats["documents_in"] - stats["documents_out"]

    base_rate = megabytes / base_s
    print(f"corpus: {megabytes:.1f} MB; removed: baseline {base_removed}, ours {ours_removed} documents")
    print(f"baseline (Python shingles + datasketch, 1 core): {base_s:6.1f} s  {base_rate:5.1f} MB/s per core")
    for workers, ours_s in seconds.items():
        print(
            f"ours     (dedup stage, {workers} core{'s' if workers > 1 else ' '}):             {ours_s:6.1f} s  "
            f"{megabytes / ours_s / workers:5.1f} MB/s per core"
        )
    print(f"ratio ours/baseline per core (1 core each): {megabytes / seconds[1] / base_rate:.2f}x")
    if args.workers > 1:
        print(f"scaling 1 -> {args.workers} cores: {seconds[1] / seconds[args.workers]:.2f}x")


if __name__ == "__main__":
    main()
