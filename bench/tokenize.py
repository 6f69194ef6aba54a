"""Benchmark: the tokenize stage vs what gpt-neox's tools/datasets/preprocess_data.py does.

Same corpus (the sample corpus repeated x4, ~128 MB in 8 Pile-format shards), same tokenizer (a byte-level BPE
trained on it), same cores, same output (.bin/.idx, checked identical). The baseline reads the shards in the
main process and encodes one document at a time in `multiprocessing.Pool(workers).imap(..., chunksize=25)`,
writing each document as it comes back, like gpt-neox. Ours runs with Ray already started (as inside the
pipeline); Ray's start-up is printed separately.

Then the same documents as ONE shard (as a Pile shard arrives), each side as its own process, start-up included:
`neox tokenize --workers N` (Ray's start, chunks of the shard on N cores) against the baseline loop run as a
process (`--baseline-process`), which reads the shard in one process as gpt-neox does.

    .venv/bin/python bench/tokenize.py [--workers 2] [--vocab-size 50000]
"""

from __future__ import annotations

import os
import sys

# Run as a file, this folder leads sys.path and bench/tokenize.py would shadow the standard library's
# `tokenize` (imported by numpy and others): take the folder off the path before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from neox.data.indexed import merge_parts, token_dtype  # noqa: E402
from neox.data.jsonl import Rejects, list_shards, read_shard, write_shard  # noqa: E402
from neox.data.sample import build_sample_corpus  # noqa: E402
from neox.data.tokenize import data_prefix, tokenize_shards  # noqa: E402
from neox.data.tokenizer import eod_id, load_tokenizer, train_bpe  # noqa: E402

_tokenizer = None


def _init_worker(path: str) -> None:
    global _tokenizer
    _tokenizer = load_tokenizer(path)


def _encode_one(text: str) -> list[int]:
    ids = _tokenizer.encode(text).ids
    return ids + [eod_id(_tokenizer)] if ids else []


def baseline(shards: list[Path], tokenizer: Path, out_prefix: Path, workers: int) -> int:
    """gpt-neox's loop: Pool.imap over documents (chunksize 25), one write per document."""
    dtype = token_dtype(load_tokenizer(tokenizer).get_vocab_size())
    texts = (doc.text for shard in shards for doc in read_shard(shard, Rejects()))
    sizes = []
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer),)) as pool:
        with open(f"{out_prefix}.part.bin", "wb") as out:
            for ids in pool.imap(_encode_one, texts, chunksize=25):
                if ids:
                    out.write(np.array(ids, dtype=dtype).tobytes())
                    sizes.append(len(ids))
    return merge_parts(out_prefix, [(Path(f"{out_prefix}.part.bin"), np.array(sizes))], dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--chunk-mb", type=int, default=16, help="our chunk size in the one-shard comparison")
    parser.add_argument("--baseline-process", nargs=3, metavar=("SHARD", "TOKENIZER", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_process:
        shard, tokenizer, prefix = map(Path, args.baseline_process)
        baseline([shard], tokenizer, prefix, args.workers)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_sample_corpus(tmp / "sample", shards=4)
        docs = [{"text": d.text, "meta": d.meta} for s in list_shards(tmp / "sample") for d in read_shard(s, Rejects())]
        corpus = tmp / "corpus"
        corpus.mkdir()
        everything = docs * args.repeat
        for i in range(8):
            write_shard(corpus / f"{i:02d}.jsonl.zst", everything[i::8])
        megabytes = sum(len(d["text"].encode()) for d in everything) / 1e6
        print(
            f"corpus: {len(everything)} documents, {megabytes:.1f} MB in 8 shards; "
            f"training a {args.vocab_size}-token BPE ..."
        )
        tokenizer = tmp / "tokenizer.json"
        train_bpe((d["text"] for d in docs), args.vocab_size, show_progress=False).save(str(tokenizer))

        started = time.perf_counter()
        tokens = baseline(list_shards(corpus), tokenizer, tmp / "baseline_text_document", args.workers)
        base_s = time.perf_counter() - started

        import ray

        from neox.runtime.ray_cluster import ensure_ray

        started = time.perf_counter()
        ensure_ray(num_cpus=args.workers)
        ray_s = time.perf_counter() - started
        started = time.perf_counter()
        out = tokenize_shards(corpus, tokenizer, tmp / "work", workers=args.workers).path
        ours_s = time.perf_counter() - started
        ray.shutdown()

        for suffix in (".bin", ".idx"):
            same = (tmp / f"baseline_text_document{suffix}").read_bytes() == Path(
                f"{data_prefix(out)}{suffix}"
            ).read_bytes()
            assert same, f"outputs differ ({suffix})"
        print(f"tokens: {tokens:,} (outputs byte-identical)")
        print(
            f"baseline (gpt-neox Pool.imap, {args.workers} workers): {base_s:6.1f} s  "
            f"{tokens / base_s / 1e6:5.2f} M tokens/s"
        )
        print(
            f"ours     (tokenize stage, {args.workers} workers):      {ours_s:6.1f} s  "
            f"{tokens / ours_s / 1e6:5.2f} M tokens/s  (+ Ray start {ray_s:.1f} s)"
        )
        print(f"ratio ours/baseline: {base_s / ours_s:.2f}x  (with Ray start: {base_s / (ours_s + ray_s):.2f}x)")
        one_shard(tmp, everything, tokenizer, args.workers, args.chunk_mb)


def one_shard(tmp: Path, docs: list[dict], tokenizer: Path, workers: int, chunk_mb: int) -> None:
    """The whole-process comparison on one shard holding every document."""
    single = tmp / "single"
    single.mkdir()
    write_shard(single / "00.jsonl.zst", docs)
    megabytes = sum(len(d["text"].encode()) for d in docs) / 1e6

    def timed(command: list[str]) -> tuple[float, str]:
        started = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        return time.perf_counter() - started, done.stdout.strip()

    base_s, _ = timed(
        [sys.executable, __file__, "--workers", str(workers), "--baseline-process"]
        + [str(single / "00.jsonl.zst"), str(tokenizer), str(tmp / "single_text_document")]
    )
    ours_s, printed = timed(
        [sys.executable, "-m", "neox.cli", "tokenize", str(single), "--tokenizer", str(tokenizer)]
        + ["--work-root", str(tmp / "single-work"), "--workers", str(workers), "--chunk-mb", str(chunk_mb)]
    )
    out = printed.splitlines()[-1]  # the stage's output folder
    for suffix in (".bin", ".idx"):
        same = (tmp / f"single_text_document{suffix}").read_bytes() == Path(f"{data_prefix(out)}{suffix}").read_bytes()
        assert same, f"one-shard outputs differ ({suffix})"
    print(f"one {megabytes:.0f} MB shard, whole processes (outputs byte-identical):")
    print(f"baseline (gpt-neox loop as a process, {workers} workers): {base_s:6.1f} s")
    print(f"ours     (neox tokenize, Ray start included, {workers} workers, {chunk_mb} MB chunks): {ours_s:6.1f} s")
    print(f"ratio ours/baseline, whole process: {base_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
