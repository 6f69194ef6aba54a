"""Benchmark: training step throughput of (a) transformers' GPTNeoXForCausalLM in a bare PyTorch loop, (b) our
GPT-NeoX in the same bare loop, (c) our full path: Ray Train + DeepSpeed (1 worker, which runs ZeRO stage 0:
one rank has nothing to shard), all on the same
model shape, batch, data and threads, in one run. Prints tokens/s of each and the ratios b/a and c/b.

Steady state: median step times after a 5-step warm-up. (a) and (b) alternate step by step; (b) runs again
right after (c), since this shared machine's speed drifts by tens of percent between minutes. (c)'s step times
come from its metrics.jsonl, so Ray and DeepSpeed start-up are excluded (and printed).

    .venv/bin/python bench/train_step.py [--steps 30] [--hidden 256] [--layers 4] [--seq 256] [--batch 8]
    python bench/train_step.py --device cuda --batch 16 [--model configs/model/pythia-410m.yml]   # MFU, bf16
        [--cross-entropy chunked|liger] [--fused-adamw]      # the engine (c) with train.cross_entropy, fused_adamw

With --layouts, instead: the same shape through the full path on 2 workers (one core each) in each model-parallel
layout at the same global batch: data parallel 2 (the baseline), tensor parallel 2, pipeline parallel 2 (four
micro-batches of half the batch per step, 1F1B); prints each one's median step time and its ratio to data parallel.

    .venv/bin/python bench/train_step.py --layouts [--steps 30] [--batch 8]
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

from neox.model.config import load_model_config  # noqa: E402
from neox.model.gpt_neox import initialized  # noqa: E402
from neox.model.hf import hf_config  # noqa: E402


class BareLoop:
    """AdamW + gradient clipping, one step at a time, so two models can take turns on the same machine state."""

    def __init__(self, model: torch.nn.Module, logits_of, autocast: torch.dtype | None = None):
        self.model, self.logits_of, self.autocast = model.train(), logits_of, autocast
        on_gpu = next(model.parameters()).is_cuda
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, fused=on_gpu or None
        )
        self.sync = torch.cuda.synchronize if on_gpu else (lambda: None)
        self.times: list[float] = []

    def step(self, tokens: torch.Tensor) -> None:
        started = time.perf_counter()
        with torch.autocast(
            tokens.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        ):
            logits = self.logits_of(self.model, tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        self.times.append(time.perf_counter() - started)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def transformers_model(cfg) -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hf_cfg = hf_config(cfg, torch.float32, None, None)
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(**{k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type")})
    )


def gpu_main(args: argparse.Namespace) -> None:
    """bf16 on one GPU, per model shape: (a) transformers and (b) ours in the bare loop under autocast with
    fused AdamW, (b') ours torch.compiled, (c) ours in the DeepSpeed engine exactly as configured by
    `neox.train.loop.deepspeed_config` (bf16, one rank, no Ray: Ray only starts the process), eager and compiled.
    Tokens are random: a step's cost does not depend on their values. MFU counts model FLOPs (GPT-NeoX's
    formula without recomputation) over the GPU's dense bf16 peak."""
    import deepspeed
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from neox.model.config import load_neox_yaml
    from neox.train.config import TrainConfig
    from neox.train.cross_entropy import linear_cross_entropy
    from neox.train.engine import deepspeed_config, parameter_groups
    from neox.train.flops import flops_per_step, gpu_peak_tflops

    ATTENTION_BACKENDS = {
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH],
    }
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    peak = gpu_peak_tflops()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    deepspeed.init_distributed(dist_backend="nccl")
    print(
        f"{torch.cuda.get_device_name()}: peak {peak} TFLOPS bf16 dense; torch {torch.__version__}, "
        f"deepspeed {deepspeed.__version__}",
        flush=True,
    )
    rows = []

    def timed(label: str, step, batches, cfg, seq: int) -> None:
        times = []
        for i in range(args.steps):
            started = time.perf_counter()
            step(batches[i % len(batches)])
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times[5:])
        tflops = flops_per_step(cfg, args.batch, seq, activation_checkpointing=False) / seconds / 1e12
        rows.append((label, seconds, args.batch * seq / seconds, tflops, tflops / peak if peak else float("nan")))
        print(
            f"{label:44s} {seconds * 1000:8.1f} ms/step  {args.batch * seq / seconds:9.0f} tokens/s  "
            f"{tflops:6.1f} TFLOPS  MFU {rows[-1][4]:.1%}  (first step {times[0]:.1f} s)",
            flush=True,
        )

    for model_path in args.model:
        cfg, _ = load_model_config(model_path, vocab_size=50277)  # the GPT-NeoX-20B tokenizer, as Pythia
        seq = int(load_neox_yaml(model_path)["seq_length"])
        shape = Path(model_path).stem
        generator = torch.Generator(device=device).manual_seed(0)
        batches = [
            torch.randint(cfg.vocab_size, (args.batch, seq + 1), device=device, generator=generator) for _ in range(4)
        ]
        print(
            f"{shape}: {cfg.num_layers} layers x {cfg.hidden_size}, vocab {cfg.vocab_size}, batch {args.batch} x {seq}",
            flush=True,
        )

        def bare(model: torch.nn.Module, logits_of=lambda m, x: m(x)):
            return BareLoop(model.to(device), logits_of, torch.bfloat16).step

        def engine(compiled: bool):
            train_cfg = TrainConfig(
                model=(model_path,),
                seq_length=seq,
                micro_batch_size=args.batch,
                precision="bf16",
                num_workers=1,
                use_gpu=True,
                compile=compiled,
                cross_entropy=args.cross_entropy,
                fused_adamw=args.fused_adamw,
            )
            model = initialized(cfg)
            ds, _, _, _ = deepspeed.initialize(
                model=model, model_parameters=parameter_groups(model, 0.01), config=deepspeed_config(train_cfg)
            )
            if compiled:
                ds.compile()

            def step(tokens: torch.Tensor) -> None:
                if train_cfg.cross_entropy == "full":
                    logits = ds(tokens[:, :-1])
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
                else:  # as the training loop computes it: the loss fused with the output layer
                    hidden = ds(tokens[:, :-1], hidden_only=True)
                    loss = linear_cross_entropy(hidden, model.output_weight, tokens[:, 1:], train_cfg.cross_entropy)
                ds.backward(loss)
                ds.step()

            return step

        variants = {
            "a": ("(a) transformers, bare loop", lambda: bare(transformers_model(cfg), lambda m, x: m(x).logits)),
            "b": ("(b) ours, bare loop", lambda: bare(initialized(cfg))),
            "bc": ("(b') ours, bare loop, torch.compile", lambda: bare(torch.compile(initialized(cfg)))),
            "c": ("(c) ours, DeepSpeed engine", lambda: engine(False)),
            "cc": ("(c') ours, DeepSpeed engine, compiled", lambda: engine(True)),
        }
        for key in args.variants:
            for attention in args.attention:
                label, make = variants[key]
                step = make()
                with sdpa_kernel(ATTENTION_BACKENDS[attention], set_priority=True):
                    timed(f"{shape} {label}, {attention}", step, batches, cfg, seq)
                del step
                torch.cuda.empty_cache()

    print(f"\n{'':56s} {'ms/step':>8s} {'tokens/s':>10s} {'TFLOPS':>7s} {'MFU':>6s}")
    for label, seconds, tokens, tflops, mfu in rows:
        print(f"{label:56s} {seconds * 1000:8.1f} {tokens:10.0f} {tflops:7.1f} {mfu:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: bf16 on one GPU with MFU, on the --model shapes (the options below are CPU-only)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["a", "b", "bc", "c", "cc"],
        help="with --device cuda: a (transformers), b (ours), bc (ours compiled), c (DeepSpeed), cc (compiled)",
    )
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["flash"],
        choices=("flash", "cudnn"),
        help="with --device cuda: scaled_dot_product_attention backend(s) to time",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=["configs/model/pythia-160m.yml", "configs/model/pythia-410m.yml"],
        help="GPT-NeoX model YAMLs to time with --device cuda",
    )
    parser.add_argument(
        "--cross-entropy",
        default="full",
        choices=("full", "chunked", "liger"),
        help="with --device cuda: train.cross_entropy of (c) and (cc)",
    )
    parser.add_argument("--fused-adamw", action="store_true", help="with --device cuda: train.fused_adamw of (c), (cc)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--zero", type=int, default=1, help="ZeRO stage of (c)")
    parser.add_argument(
        "--layouts", action="store_true", help="time data, tensor and pipeline parallel 2 against each other"
    )
    args = parser.parse_args()
    if args.device == "cuda":
        return gpu_main(args)
    from neox.data.dataset import build_split_datasets
    from neox.data.sample import build_sample_corpus
    from neox.data.tokenize import data_prefix, tokenize_shards
    from neox.data.tokenizer import tokenizer_stage
    from neox.pipeline.layout import TOKENIZER_FILE

    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("building data: sample corpus -> 8192-token BPE -> .bin/.idx ...", flush=True)
        build_sample_corpus(tmp / "corpus", shards=2)
        tokenizer = tokenizer_stage(tmp / "work", vocab_size=8192, input_dir=tmp / "corpus").path / TOKENIZER_FILE
        tokenized = tokenize_shards(tmp / "corpus", tokenizer, tmp / "work").path
        model_yaml = tmp / "model.yml"
        model_yaml.write_text(
            yaml.safe_dump(
                {
                    "num_layers": args.layers,
                    "hidden_size": args.hidden,
                    "num_attention_heads": args.heads,
                    "seq_length": args.seq,
                    "max_position_embeddings": args.seq,
                    "rotary_pct": 0.25,
                    "gpt_j_residual": True,
                    "no_weight_tying": True,
                    "bias_gelu_fusion": True,
                    "init_method": "small_init",
                    "output_layer_init_method": "wang_init",
                }
            )
        )
        cfg, _ = load_model_config(model_yaml, vocab_size=8192)
        data = build_split_datasets(
            data_prefix(tokenized), "969,30,1", {"train": args.steps * args.batch}, args.seq, 1234
        )["train"]
        batches = [
            torch.from_numpy(np.stack([data[i * args.batch + j] for j in range(args.batch)])) for i in range(args.steps)
        ]
        tokens_per_step = args.batch * args.seq
        print(
            f"model: {args.layers} layers x {args.hidden} hidden, vocab {cfg.vocab_size}; "
            f"batch {args.batch} x {args.seq} tokens; "
            f"{args.threads} threads",
            flush=True,
        )

        if args.layouts:
            return layouts(args, model_yaml, tokenized, tmp)
        torch.manual_seed(0)
        loop_a = BareLoop(transformers_model(cfg), lambda m, x: m(x).logits)
        loop_b = BareLoop(initialized(cfg, 0), lambda m, x: m(x))
        for i, tokens in enumerate(batches):  # (a) and (b) take turns, so machine noise hits both alike
            for loop in (loop_a, loop_b) if i % 2 else (loop_b, loop_a):
                loop.step(tokens)
        for loop in (loop_a, loop_b):
            del loop.times[:5]  # warm-up
        a = loop_a.seconds

        from neox.runtime.ray_cluster import ensure_ray

        started = time.perf_counter()
        ensure_ray(num_cpus=args.threads)
        c = full_path_step(
            args, model_yaml, tokenized, tmp, num_workers=1, cpus_per_worker=args.threads, zero_stage=args.zero
        )
        total = time.perf_counter() - started
        for tokens in batches:  # (b) again right after (c): its figure is the median over both stretches
            loop_b.step(tokens)
        b = loop_b.seconds

    for label, seconds in (
        ("(a) transformers GPTNeoXForCausalLM, bare loop", a),
        ("(b) ours, bare loop", b),
        (f"(c) ours, Ray Train + DeepSpeed (ZeRO-{args.zero} asked), 1 worker", c),
    ):
        print(f"{label:52s} {seconds * 1000:8.1f} ms/step  {tokens_per_step / seconds:9.0f} tokens/s")
    print(
        f"(c) wall time including Ray + DeepSpeed start-up and the final export: {total:.1f} s for {args.steps} steps"
    )
    print(f"ratio b/a: {a / b:.2f}x   ratio c/b: {b / c:.2f}x")


def full_path_step(args: argparse.Namespace, model_yaml: Path, tokenized: Path, tmp: Path, **train: object) -> float:
    """Median step time (after 5 warm-up steps) of a run through Ray Train + DeepSpeed, from its metrics.jsonl."""
    from neox.train.config import build_train_config
    from neox.train.launch import train as train_run

    section = {
        "model": str(model_yaml),
        "data": str(tokenized),
        "name": "bench",
        "storage_path": str(tmp / "runs"),
        "seq_length": args.seq,
        "micro_batch_size": args.batch,
        "train_iters": args.steps,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "log_interval": args.steps,
        "eval_interval": 10 * args.steps,
        "eval_iters": 1,
        "checkpoint_interval": 10 * args.steps,
        "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        **train,
    }
    run_dir = Path(train_run(build_train_config(section)))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["step_time_s"] for r in records[5:])


def layouts(args: argparse.Namespace, model_yaml: Path, tokenized: Path, tmp: Path) -> None:
    """Data parallel 2 against tensor parallel 2 and pipeline parallel 2, at the same global batch (2 x batch)."""
    from neox.runtime.ray_cluster import ensure_ray

    ensure_ray(num_cpus=2)
    common = {"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 1}
    half = dict(args.__dict__, batch=args.batch // 2)  # four micro-batches of half the batch: a smaller bubble
    timed = {
        "data parallel 2": full_path_step(args, model_yaml, tokenized, tmp, **common),
        "tensor parallel 2": full_path_step(
            args, model_yaml, tokenized, tmp, **common, model_parallel_size=2, gradient_accumulation_steps=2
        ),
        "pipeline parallel 2 (1F1B, 4 micro-batches)": full_path_step(
            argparse.Namespace(**half),
            model_yaml,
            tokenized,
            tmp,
            **common,
            pipe_parallel_size=2,
            gradient_accumulation_steps=4,
        ),
    }
    tokens_per_step = 2 * args.batch * args.seq
    print(f"global batch {2 * args.batch} x {args.seq} tokens, 2 workers of 1 core")
    baseline = timed["data parallel 2"]
    for label, seconds in timed.items():
        print(
            f"{label:46s} {seconds * 1000:8.1f} ms/step  {tokens_per_step / seconds:9.0f} tokens/s  "
            f"{baseline / seconds:5.2f}x data parallel"
        )


if __name__ == "__main__":
    main()
