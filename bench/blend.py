"""Benchmark: building the blending index (which dataset, which of its samples) for several weighted datasets.

Ours (`neox.data.dataset.blending_indices`, vectorised) against the greedy per-sample rule of gpt-neox's
helpers.cpp as a tight Python loop (this project's earlier numpy-per-sample loop was ~6x slower still), on the
same `--baseline-samples`, 3 datasets; then ours alone at Pythia's size, 143,000 steps x 1,024 samples.

    .venv/bin/python bench/blend.py [--weights 0.5 0.3 0.2] [--baseline-samples 1000000]
"""

from __future__ import annotations

import os
import sys

# Run as a file, this folder leads sys.path and bench/tokenize.py would shadow the standard library's
# `tokenize` (imported by numpy and others): take the folder off the path before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from neox.data.dataset import blending_indices  # noqa: E402

PYTHIA_SAMPLES = 143_000 * 1_024


def greedy_loop(weights: list[float], size: int) -> np.ndarray:
    """gpt-neox's build_blending_indices: each sample to the dataset furthest below its share."""
    shares = [w / sum(weights) for w in weights]
    current = [0] * len(shares)
    chosen = np.zeros(size, dtype=np.uint8)
    for i in range(size):
        t = max(i, 1)
        best, best_error = 0, shares[0] * t - current[0]
        for k in range(1, len(shares)):
            error = shares[k] * t - current[k]
            if error > best_error:
                best, best_error = k, error
        chosen[i] = best
        current[best] += 1
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    parser.add_argument("--baseline-samples", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.baseline_samples

    started = time.perf_counter()
    reference = greedy_loop(args.weights, n)
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    ours, _ = blending_indices(args.weights, n)
    ours_s = time.perf_counter() - started
    counts = np.bincount(ours, minlength=len(args.weights)), np.bincount(reference, minlength=len(args.weights))
    print(f"{n:,} samples, weights {args.weights}: counts ours {counts[0].tolist()}, loop {counts[1].tolist()}")
    print(f"greedy loop (Python): {loop_s:7.2f} s   {n / loop_s / 1e6:7.2f} M samples/s")
    print(f"ours (vectorised):    {ours_s:7.2f} s   {n / ours_s / 1e6:7.2f} M samples/s")
    print(f"ratio ours/loop: {loop_s / ours_s:.0f}x")

    started = time.perf_counter()
    blending_indices(args.weights, PYTHIA_SAMPLES)
    full_s = time.perf_counter() - started
    print(
        f"ours at 143,000 x 1,024 = {PYTHIA_SAMPLES:,} samples: {full_s:.1f} s "
        f"(the loop's rate would need {PYTHIA_SAMPLES / (n / loop_s) / 60:.0f} min)"
    )


if __name__ == "__main__":
    main()
