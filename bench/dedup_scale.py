"""Benchmark: how the dedup stage grows with the corpus. Driver memory must stay flat and the per-core rate steady
while the documents grow 16x (issue 15's goal: driver peak RSS <= 1.5x, documents/s per core within 20%).

Synthetic corpora of ~600-byte documents (`--words 100` random words from 20,000) in shards of 25,000
documents, 1% of them near copies of an earlier document (one word changed), at 1x, 4x and 16x `--documents`.
Each is deduplicated by `neox dedup` run as its own process (Ray start included), `--workers` cores, `--chunk-mb`
chunks. Printed per scale: the stage's seconds (its manifest), the whole process's, documents/s and MB/s per
core, the driver's peak RSS (VmHWM, polled from /proc), and the planted copies found. The baseline is the 1x
run: each row's ratio to it. `--words 650 --scales 1` gives the rate for Pile-sized (~4 KB) documents.

    .venv/bin/python bench/dedup_scale.py [--documents 100000] [--workers 2] [--chunk-mb 8] [--words 100]
"""

from __future__ import annotations

import os
import sys

# Run as a file, this folder leads sys.path and bench/tokenize.py would shadow the standard library's
# `tokenize` (imported by numpy and others): take the folder off the path before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from neox.data.jsonl import write_shard  # noqa: E402

SHARD_DOCUMENTS = 25_000
WORDS = [f"w{i}" for i in range(20_000)]


def build_corpus(out: Path, documents: int, words: int = 100, seed: int = 0) -> int:
    """Shards of random documents of about `words` words, 1% of them near copies of an earlier one; returns the
    copies planted."""
    rng = random.Random(seed)
    out.mkdir(parents=True)
    recent: list[list[str]] = []
    planted = 0
    for shard_index, start in enumerate(range(0, documents, SHARD_DOCUMENTS)):
        records = []
        for _ in range(min(SHARD_DOCUMENTS, documents - start)):
            if recent and rng.random() < 0.01:
                document = list(rng.choice(recent))
                document[rng.randrange(len(document))] = rng.choice(WORDS)  # Jaccard ~0.9 with the original
                planted += 1
            else:
                document = rng.choices(WORDS, k=rng.randint(words * 9 // 10, words * 11 // 10))
                recent = [*recent[-999:], document]
            records.append({"text": " ".join(document), "meta": {"pile_set_name": "Synthetic"}})
        write_shard(out / f"{shard_index:05d}.jsonl.zst", records)
    return planted


def run_dedup(corpus: Path, work: Path, workers: int, chunk_mb: int) -> tuple[float, int, dict]:
    """Whole-process seconds, the driver's peak RSS in bytes, and the stage's manifest."""
    command = [sys.executable, "-m", "neox.cli", "dedup", str(corpus), "--work-root", str(work)]
    command += ["--workers", str(workers), "--chunk-mb", str(chunk_mb)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    output = process.stdout.read().strip()
    if process.returncode:
        raise SystemExit(f"neox dedup failed ({process.returncode})")
    return seconds, peak * 1024, json.loads((Path(output) / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000, help="documents at 1x")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-mb", type=int, default=8)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--words", type=int, default=100, help="words per document (100: ~600 bytes)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            corpus = Path(tmp) / f"corpus-{scale}"
            planted = build_corpus(corpus, args.documents * scale, args.words)
            seconds, peak, manifest = run_dedup(corpus, Path(tmp) / f"work-{scale}", args.workers, args.chunk_mb)
            stats = manifest["stats"]
            rate = stats["documents_in"] / manifest["seconds"] / args.workers
            megabytes_per_core = stats["bytes_in"] / 1e6 / manifest["seconds"] / args.workers
            rows.append((scale, stats, manifest["seconds"], seconds, rate, peak, planted))
            removed = stats["documents_in"] - stats["documents_out"]
            print(
                f"{scale:>3}x {stats['documents_in']:>10,} docs: stage {manifest['seconds']:7.1f} s, process "
                f"{seconds:7.1f} s, {rate:8,.0f} docs/s/core ({megabytes_per_core:.1f} MB/s/core), "
                f"driver peak {peak / 2**20:7,.0f} MB, "
                f"removed {removed:,} (planted {planted:,}), {stats['chunks']} chunks",
                flush=True,
            )
    first = rows[0]
    for scale, _, _, _, rate, peak, _ in rows[1:]:
        print(
            f"{scale}x vs {first[0]}x: documents {scale / first[0]:.0f}x, driver peak RSS {peak / first[5]:.2f}x, "
            f"docs/s per core {rate / first[4]:.2f}x"
        )


if __name__ == "__main__":
    main()
