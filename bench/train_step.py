"""Benchmark: training step throughput of (a) transformers' GPTNeoXForCausalLM in a bare PyTorch loop, (b) our
GPT-NeoX in the same bare loop, (c) our full path: Ray Train + DeepSpeed (1 worker, which runs ZeRO stage 0:
one rank has nothing to shard), all on the same
model shape, batch, data and threads, in one run. Prints tokens/s of each and the ratios b/a and c/b.

Steady state: median step times after a 5-step warm-up. (a) and (b) alternate step by step; (b) runs again
right after (c), since this shared machine's speed drifts by tens of percent between minutes. (c)'s step times
come from its metrics.jsonl, so Ray and DeepSpeed start-up are excluded (and printed).

    .venv/bin/python bench/train_step.py [--steps 30] [--hidden 256] [--layers 4] [--seq 256] [--batch 8]
"""

from __future__ import annotations

import os
import sys

# Run as a file, this folder leads sys.path and bench/tokenize.py would shadow the standard library's
# `tokenize` (imported by numpy and others): take the folder off the path before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from neox.config import load_model_config  # noqa: E402
from neox.data.dataset import build_split_datasets  # noqa: E402
from neox.data.sample import build_sample_corpus  # noqa: E402
from neox.data.tokenize import data_prefix, tokenize_shards  # noqa: E402
from neox.data.tokenizer import tokenizer_stage  # noqa: E402
from neox.hf import hf_config  # noqa: E402
from neox.model.gpt_neox import GPTNeoX, init_weights  # noqa: E402


class BareLoop:
    """AdamW + gradient clipping, one step at a time, so two models can take turns on the same machine state."""

    def __init__(self, model: torch.nn.Module, logits_of):
        self.model, self.logits_of = model.train(), logits_of
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
        self.times: list[float] = []

    def step(self, tokens: torch.Tensor) -> None:
        started = time.perf_counter()
        logits = self.logits_of(self.model, tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - started)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--zero", type=int, default=1, help="ZeRO stage of (c)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("building data: sample corpus -> 8192-token BPE -> .bin/.idx ...", flush=True)
        build_sample_corpus(tmp / "corpus", shards=2)
        tokenizer = tokenizer_stage(tmp / "work", vocab_size=8192, input_dir=tmp / "corpus")
        tokenized = tokenize_shards(tmp / "corpus", tokenizer, tmp / "work")
        model_yaml = tmp / "model.yml"
        model_yaml.write_text(yaml.safe_dump({
            "num_layers": args.layers, "hidden_size": args.hidden, "num_attention_heads": args.heads,
            "seq_length": args.seq, "max_position_embeddings": args.seq, "rotary_pct": 0.25, "gpt_j_residual": True,
            "no_weight_tying": True, "bias_gelu_fusion": True, "init_method": "small_init", "output_layer_init_method": "wang_init",
        }))
        cfg, _ = load_model_config(model_yaml, vocab_size=8192)
        data = build_split_datasets(data_prefix(tokenized), "969,30,1", {"train": args.steps * args.batch}, args.seq, 1234)["train"]
        batches = [torch.from_numpy(np.stack([data[i * args.batch + j] for j in range(args.batch)])) for i in range(args.steps)]
        tokens_per_step = args.batch * args.seq
        print(f"model: {args.layers} layers x {args.hidden} hidden, vocab {cfg.vocab_size}; batch {args.batch} x {args.seq} tokens; "
              f"{args.threads} threads", flush=True)

        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        torch.manual_seed(0)
        hf_cfg = hf_config(cfg, torch.float32, None, None)
        theirs = GPTNeoXForCausalLM(GPTNeoXConfig(**{k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type")}))
        loop_a = BareLoop(theirs, lambda m, x: m(x).logits)
        loop_b = BareLoop(init_weights(GPTNeoX(cfg), generator=torch.Generator().manual_seed(0)), lambda m, x: m(x))
        for i, tokens in enumerate(batches):  # (a) and (b) take turns, so machine noise hits both alike
            for loop in (loop_a, loop_b) if i % 2 else (loop_b, loop_a):
                loop.step(tokens)
        for loop in (loop_a, loop_b):
            del loop.times[:5]  # warm-up
        a = loop_a.seconds

        from neox.ray_runtime import ensure_ray
        from neox.train.config import build_train_config
        from neox.train.launch import train

        started = time.perf_counter()
        ensure_ray(num_cpus=args.threads)
        train_cfg = build_train_config({
            "model": str(model_yaml), "data": str(tokenized), "name": "bench", "storage_path": str(tmp / "runs"),
            "seq_length": args.seq, "micro_batch_size": args.batch, "train_iters": args.steps, "lr": 1e-3, "min_lr": 1e-4,
            "zero_stage": args.zero, "num_workers": 1, "cpus_per_worker": args.threads, "log_interval": args.steps,
            "eval_interval": 10 * args.steps, "eval_iters": 1, "checkpoint_interval": 10 * args.steps,
            "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        })
        run_dir = train(train_cfg)
        total = time.perf_counter() - started
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        c = statistics.median(r["step_time_s"] for r in records[5:])
        for tokens in batches:  # (b) again right after (c): its figure is the median over both stretches
            loop_b.step(tokens)
        b = loop_b.seconds

    for label, seconds in (("(a) transformers GPTNeoXForCausalLM, bare loop", a), ("(b) ours, bare loop", b),
                           (f"(c) ours, Ray Train + DeepSpeed (ZeRO-{args.zero} asked), 1 worker", c)):
        print(f"{label:52s} {seconds * 1000:8.1f} ms/step  {tokens_per_step / seconds:9.0f} tokens/s")
    print(f"(c) wall time including Ray + DeepSpeed start-up and the final export: {total:.1f} s for {args.steps} steps")
    print(f"ratio b/a: {a / b:.2f}x   ratio c/b: {b / c:.2f}x")


if __name__ == "__main__":
    main()
