"""Benchmark: the training loss from the last hidden states, forward and backward, through the full logits (the
baseline: `F.linear` then cross-entropy, as training computes it with train.cross_entropy: full) and through our
chunked linear + cross-entropy (train.cross_entropy: chunked), on the same inputs, in one run. Each variant runs in
a child process of its own, so its peak memory (max RSS on the CPU; torch's peak allocation on a GPU) is its own.
Prints time per step, peak memory, and the ratios; then the chunked one alone at growing token counts, whose
memory stays flat where the full logits' grows with the tokens.

    .venv/bin/python bench/cross_entropy.py [--tokens 2048] [--hidden 512] [--vocab 50304] [--device cpu|cuda]
"""

from __future__ import annotations

import os
import sys

# Run as a file, this folder leads sys.path and bench/tokenize.py would shadow the standard library's
# `tokenize` (imported by numpy and others): take the folder off the path before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402


def measure(kind: str, tokens: int, hidden: int, vocab: int, device: str, steps: int) -> dict:
    """One variant's median step time and peak memory, in this process."""
    import torch

    from neox.train.cross_entropy import chunked_linear_cross_entropy
    from neox.train.pipeline import next_token_loss

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=generator).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden, generator=generator) / hidden**0.5).to(device, dtype).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=generator).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        x.grad = weight.grad = None
        sync()
        started = time.perf_counter()
        if kind == "full":
            loss = next_token_loss(x @ weight.T, labels, None)
        else:
            loss = chunked_linear_cross_entropy(x, weight, labels)
        loss.backward()
        sync()
        times.append(time.perf_counter() - started)
    peak = (
        torch.cuda.max_memory_allocated() - before
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {"seconds": sorted(times[1:])[len(times[1:]) // 2], "peak_bytes": peak, "loss": float(loss)}


def child(kind: str, args: argparse.Namespace, tokens: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--tokens", str(tokens), "--hidden", str(args.hidden)]
    command += ["--vocab", str(args.vocab), "--device", args.device, "--steps", str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step (batch x sequence)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (the first is a warm-up)")
    parser.add_argument("--child", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.tokens, args.hidden, args.vocab, args.device, args.steps)))
        return
    memory = "peak allocation" if args.device == "cuda" else "max RSS (process)"
    print(f"{args.tokens} tokens x hidden {args.hidden} -> vocabulary {args.vocab} on {args.device}; {memory}")
    full, chunked = (child(kind, args, args.tokens) for kind in ("full", "chunked"))
    for name, result in (("full logits (baseline)", full), ("chunked (ours)", chunked)):
        print(f"  {name:24s} {result['seconds'] * 1e3:9.1f} ms/step  {result['peak_bytes'] / 2**20:9.0f} MiB")
    print(f"  loss difference {abs(full['loss'] - chunked['loss']):.2e}")
    print(
        f"  ours / baseline: time {chunked['seconds'] / full['seconds']:.2f}x, "
        f"memory {chunked['peak_bytes'] / full['peak_bytes']:.2f}x"
    )
    print("growing the tokens (memory of the full logits grows with them; the chunked loss's stays near flat):")
    for factor in (1, 2, 4):
        tokens = args.tokens * factor
        full, chunked = (child(kind, args, tokens) for kind in ("full", "chunked"))
        print(
            f"  {tokens:7d} tokens: full {full['peak_bytes'] / 2**20:7.0f} MiB, "
            f"chunked {chunked['peak_bytes'] / 2**20:7.0f} MiB"
        )


if __name__ == "__main__":
    main()
