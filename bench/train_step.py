"""Benchmark: training step throughput of (a) transformers' GPTNeoXForCausalLM in a bare PyTorch loop, (b) our
GPT-NeoX in the same bare loop, (c) our full path: Ray Train + DeepSpeed (1 worker, which runs ZeRO stage 0:
one rank has nothing to shard), all on the same
model shape, batch, data and threads, in one run. Prints tokens/s of each and the ratios b/a and c/b.

Steady state: median step times after a 5-step warm-up. (a) and (b) alternate step by step; (b) runs again
right after (c), since this shared machine's speed drifts by tens of percent between minutes. (c)'s step times
come from its metrics.jsonl, so Ray and DeepSpeed start-up are excluded (and printed).

    .venv/bin/python bench/train_step.py [--steps 30] [--hidden 256] [--layers 4] [--seq 256] [--batch 8]

With --device cuda, instead: MFU, tokens/s and peak memory on one GPU, bf16, of each configuration named by
--variants (transformers' model, ours in a bare loop, ours in the DeepSpeed engine as the training loop builds it,
each with any of the kernel and memory levers) on each --model shape, rows to --out as they are measured.
`bench/gpu/run.sh` runs it, and bench/gpu_checks.py, in one device session.

    python bench/train_step.py --device cuda [--model configs/model/pythia-410m.yml ...] [--batch 16]
        [--variants engine bare hf engine:ce=liger,ln=liger,rope=liger,adamw=fused ...] [--out DIR] [--profile SPEC]
    .venv/bin/python bench/train_step.py --device cuda --rehearse --model configs/model/pythia-14m.yml  # on the CPU

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
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
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

    def __init__(self, model: torch.nn.Module, loss_of, autocast: torch.dtype | None = None):
        self.model, self.loss_of, self.autocast = model.train(), loss_of, autocast
        on_gpu = next(model.parameters()).is_cuda
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, fused=on_gpu or None
        )
        self.sync = torch.cuda.synchronize if on_gpu else (lambda: None)
        self.times: list[float] = []

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        with torch.autocast(
            tokens.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        ):
            loss = self.loss_of(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        self.times.append(time.perf_counter() - started)
        return loss.detach()

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def transformers_model(cfg) -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hf_cfg = hf_config(cfg, torch.float32, None, None)
    hf_cfg = {k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type")}
    # no key/value cache: training has no use for it, and filling one copies every layer's keys and values
    return GPTNeoXForCausalLM(GPTNeoXConfig(**hf_cfg | {"use_cache": False}))


def logits_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration the GPU benchmark times, from a spec `KIND[:OPTION,...]`. KIND: hf (transformers'
    GPTNeoXForCausalLM in the bare loop), bare (ours in the bare loop: autocast bf16, torch's fused AdamW) or engine
    (ours in the DeepSpeed engine exactly as the training loop builds it, `build_engine`). OPTIONs (bare and
    engine): ce=full|chunked|liger, ln=torch|liger, rope=torch|liger (train.cross_entropy, layer_norm, rotary),
    compile, ckpt (activation checkpointing), mb=N (micro-batch, default --batch), attn=flash|cudnn
    (scaled_dot_product_attention's backend first in line; default: torch's choice); engine only: adamw=fused,
    zero=0|1|2."""

    spec: str
    kind: str
    cross_entropy: str = "full"
    layer_norm: str = "torch"
    rotary: str = "torch"
    compile: bool = False
    activation_checkpointing: bool = False
    micro_batch: int | None = None
    fused_adamw: bool = False
    zero_stage: int = 1
    attention: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Variant:
        kind, _, options = spec.partition(":")
        if kind not in ("hf", "bare", "engine") or (kind == "hf" and options):
            raise argparse.ArgumentTypeError(f"{spec!r}: a variant is hf, bare[:OPTIONS] or engine[:OPTIONS]")
        choices = {"ce": ("full", "chunked", "liger"), "ln": ("torch", "liger"), "rope": ("torch", "liger")}
        choices |= {"attn": ("flash", "cudnn")}
        choices |= {"adamw": ("fused",), "zero": ("0", "1", "2")} if kind == "engine" else {}
        names = {
            "ce": "cross_entropy",
            "ln": "layer_norm",
            "rope": "rotary",
            "adamw": "fused_adamw",
            "attn": "attention",
        }
        names |= {"zero": "zero_stage", "mb": "micro_batch", "compile": "compile", "ckpt": "activation_checkpointing"}
        fields: dict[str, object] = {}
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            if key in ("compile", "ckpt") and not value:
                fields[names[key]] = True
            elif key == "mb" and value.isdigit() and int(value) > 0:
                fields[names[key]] = int(value)
            elif value in choices.get(key, ()):
                fields[names[key]] = {"fused": True}.get(value, int(value) if key == "zero" else value)
            else:
                raise argparse.ArgumentTypeError(f"{spec!r}: {option!r} is not an option of {kind} (see --help)")
        return cls(spec, kind, **fields)


# The default run, most telling first (the device's minutes may run out): the engine as configured today, the two
# bare baselines, then each lever added to the engine in turn, the bare loop with every kernel, and the engine's
# memory levers.
LIGER = "ce=liger,ln=liger,rope=liger"
DEFAULT_VARIANTS = [
    "engine",
    "bare",
    "hf",
    "engine:ce=liger",
    f"engine:{LIGER}",
    f"engine:{LIGER},adamw=fused",
    f"engine:{LIGER},adamw=fused,compile",
    f"bare:{LIGER}",
    f"bare:{LIGER},compile",
    f"engine:{LIGER},adamw=fused,zero=2",
    f"engine:{LIGER},adamw=fused,mb=8",
    f"engine:{LIGER},adamw=fused,mb=32",
    f"engine:{LIGER},adamw=fused,attn=cudnn",
    f"engine:{LIGER},adamw=fused,ckpt",
]


def with_attention(step, backend: str | None):
    """`step` with scaled_dot_product_attention trying `backend` first (None: torch's own order)."""
    if backend is None:
        return step
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    order = [first, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def attended(tokens: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(list(dict.fromkeys(order)), set_priority=True):
            return step(tokens)

    attended.release = getattr(step, "release", None)
    return attended


def variant_step(variant: Variant, model_path: str, cfg, seq: int, batch: int, device: torch.device):
    """The step function of `variant` (a fresh model, optimizer and engine), taking a (batch, seq + 1) tensor."""
    from neox.train.config import TrainConfig, check_layout
    from neox.train.engine import apply_activation_checkpointing, build_engine, micro_batch_loss
    from neox.train.kernels import use_kernels

    on_gpu = device.type == "cuda"
    if variant.kind == "engine":
        train_cfg = TrainConfig(
            model=(model_path,),
            seq_length=seq,
            micro_batch_size=batch,
            precision="bf16" if on_gpu else "fp32",
            num_workers=1,
            use_gpu=on_gpu,
            compile=variant.compile,
            activation_checkpointing=variant.activation_checkpointing,
            cross_entropy=variant.cross_entropy,
            layer_norm=variant.layer_norm,
            rotary=variant.rotary,
            fused_adamw=variant.fused_adamw,
            zero_stage=variant.zero_stage,
        )
        check_layout(train_cfg, cfg)  # what a run with these settings would be refused
        engine = build_engine(train_cfg, cfg)

        def step(tokens: torch.Tensor) -> torch.Tensor:
            loss = micro_batch_loss(engine, variant.cross_entropy, tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
            return loss.detach()

        step.release = engine.destroy  # DeepSpeed keeps references to the engine's buffers until destroyed
        return step
    if variant.kind == "hf":
        model = transformers_model(cfg).to(device)
        return BareLoop(model, lambda x, y: logits_loss(model(x).logits, y), torch.bfloat16 if on_gpu else None).step
    model = initialized(cfg)
    use_kernels(model, variant.layer_norm, variant.rotary)
    if variant.activation_checkpointing:
        apply_activation_checkpointing(model.layers)
    model = model.to(device)
    run = torch.compile(model) if variant.compile else model

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return micro_batch_loss(run, variant.cross_entropy, x, y)

    return BareLoop(model, loss_of, torch.bfloat16 if on_gpu else None).step


def gpu_main(args: argparse.Namespace) -> None:
    """Each --variants spec on each --model shape, one after the other on one GPU (or, with --rehearse, on the
    CPU in fp32 on a small shape, to try the run before device time is spent). Tokens are random: a step's cost
    does not depend on their values. MFU counts model FLOPs (GPT-NeoX's formula, without recomputation) over the
    GPU's dense bf16 peak. Each row keeps its last step's loss: a row whose loss is not a number timed broken
    arithmetic (a kernel that did not run) and its figures are void. Each row goes to OUT/train_step.jsonl as it
    is measured, and OUT/train_step.md is rewritten as the table of every row there, so a run cut short keeps
    what it measured. A variant that fails (out of memory, a kernel error) is recorded with its error and the run
    goes on."""
    import deepspeed

    from neox.model.config import load_neox_yaml
    from neox.train.flops import flops_per_step, gpu_peak_tflops

    device = torch.device("cpu") if args.rehearse else torch.device("cuda", 0)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
    peak = gpu_peak_tflops()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    versions = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu (rehearsal)",
        "peak_tflops": peak,
        **{name: package_version(name) for name in ("torch", "deepspeed", "liger-kernel", "transformers", "triton")},
    }
    print(json.dumps(versions), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "versions.json").write_text(json.dumps(versions, indent=1))
    rows_file = args.out / "train_step.jsonl"
    run = f"{time.strftime('%Y-%m-%dT%H:%M:%S')}/{os.getpid()}"  # pairs (c) with (b) measured in the same run
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    for model_path in args.model:
        cfg, _ = load_model_config(model_path, vocab_size=50277)  # the GPT-NeoX-20B tokenizer, as Pythia
        seq = 128 if args.rehearse else int(load_neox_yaml(model_path)["seq_length"])
        shape = Path(model_path).stem
        print(f"{shape}: {cfg.num_layers} layers x {cfg.hidden_size}, vocab {cfg.vocab_size}, seq {seq}", flush=True)
        for variant in args.variants:
            batch = variant.micro_batch or args.batch
            row = {"run": run, "model": shape, "variant": variant.spec, "batch": batch, "seq": seq}
            generator = torch.Generator().manual_seed(0)
            batches = [torch.randint(cfg.vocab_size, (batch, seq + 1), generator=generator).to(device) for _ in "ab"]
            step = None
            try:
                if on_gpu:
                    torch.cuda.reset_peak_memory_stats()
                step = with_attention(variant_step(variant, model_path, cfg, seq, batch, device), variant.attention)
                times = []
                for i in range(args.steps):
                    started = time.perf_counter()
                    loss = step(batches[i % 2])
                    sync()
                    times.append(time.perf_counter() - started)
                seconds = statistics.median(times[5:])
                row["loss"] = round(loss.item(), 4)  # on random tokens about ln(vocabulary): a NaN voids the row
                tflops = flops_per_step(cfg, batch, seq, activation_checkpointing=False) / seconds / 1e12
                row |= {
                    "ms_per_step": round(seconds * 1000, 2),
                    "tokens_per_s": round(batch * seq / seconds),
                    "tflops": round(tflops, 1),
                    "mfu": round(tflops / peak, 4) if peak else None,
                    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if on_gpu else None,
                    "first_step_s": round(times[0], 1),
                }
                if args.profile == variant.spec:
                    try:  # the timing above stands even if the profiler fails
                        profile(step, batches, sync, args.out / f"profile_{shape}.txt", on_gpu)
                    except Exception as error:
                        row["profile_error"] = f"{type(error).__name__}: {error}"[:300]
            except Exception as error:  # one failing lever must not cost the rest of the run
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            finally:
                if getattr(step, "release", None) is not None:
                    step.release()
                del step
                if variant.compile:
                    torch._dynamo.reset()
                while gc.collect():  # parameters are views of DeepSpeed's flat buffer: a second pass frees them
                    pass
                if on_gpu:
                    torch.cuda.empty_cache()
            with rows_file.open("a") as out:
                out.write(json.dumps(row) + "\n")
            print(format_row(row), flush=True)
            # after every row, of every row in the folder: runs one after another into one --out (bench/gpu/run.sh
            # runs a process per shape, each under a time limit) make one table, and a run cut short keeps its rows
            (args.out / "train_step.md").write_text(markdown_table(read_rows(rows_file), versions))
    print("\n" + (args.out / "train_step.md").read_text())


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def void(row: dict) -> bool:
    """Whether a measured row timed steps whose loss is not a number (rows from before losses were kept: no)."""
    return not math.isfinite(row.get("loss", 0.0))


def mfu_text(row: dict) -> str:
    if void(row):
        return f"void (loss {row['loss']})"
    return f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"


def format_row(row: dict) -> str:
    head = f"{row['model']:12s} {row['variant']:58s}"
    if "error" in row:
        return f"{head} FAILED {row['error']}"
    mfu = mfu_text(row)
    memory = f"{row['peak_gib']} GiB" if row["peak_gib"] is not None else ""
    return (
        f"{head} {row['ms_per_step']:8.1f} ms  {row['tokens_per_s']:8d} tok/s  {row['tflops']:6.1f} TFLOPS  "
        f"MFU {mfu}  {memory}  loss {row.get('loss', '-')}  (first step {row['first_step_s']} s)"
    )


def markdown_table(rows: list[dict], versions: dict) -> str:
    """The rows as a Markdown table under the device and versions, then each engine row's tokens/s over the bare
    loop's with the same settings in the same run ((c)/(b)). The bare loop always steps torch's fused AdamW on a
    GPU, so an engine row without adamw=fused also shows what its optimizer costs."""
    lines = [
        "Measured on " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None) + ".",
        "",
        "| model | variant | micro-batch x seq | ms/step | tokens/s | TFLOPS | MFU | peak GiB | loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['model']} | `{row['variant']}` | {row['batch']} x {row['seq']} | failed: {row['error']} ||||||"
            )
            continue
        lines.append(
            f"| {row['model']} | `{row['variant']}` | {row['batch']} x {row['seq']} | {row['ms_per_step']} | "
            f"{row['tokens_per_s']} | {row['tflops']} | {mfu_text(row)} | {row['peak_gib'] or '-'} | "
            f"{row.get('loss', '-')} |"
        )
    lines.append("")
    # (c)/(b): each engine row over the bare row with the same kernels, compile, checkpointing and micro-batch
    measured = [(row, Variant.parse(row["variant"])) for row in rows if "error" not in row and not void(row)]
    for row, variant in measured:
        twin = dataclasses.replace(variant, spec="", kind="bare", fused_adamw=False, zero_stage=1)
        for bare, other in measured:
            if (
                variant.kind == "engine"
                and (bare["model"], bare["run"]) == (row["model"], row["run"])
                and dataclasses.replace(other, spec="") == twin
            ):
                ratio = row["tokens_per_s"] / bare["tokens_per_s"]
                lines.append(f"- {row['model']}: `{row['variant']}` / `{bare['variant']}` = {ratio:.2f}")
    return "\n".join(lines) + "\n"


def profile(step, batches: list[torch.Tensor], sync, path: Path, on_gpu: bool) -> None:
    """The top kernels by their own time over 3 steps (after the timed ones), to `path`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profiler(activities=activities) as recorded:
        for i in range(3):
            step(batches[i % 2])
        sync()
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    path.write_text(recorded.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: bf16 on one GPU with MFU, on the --model shapes (the options from --hidden on are CPU-only)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        type=Variant.parse,
        default=[Variant.parse(spec) for spec in DEFAULT_VARIANTS],
        metavar="KIND[:OPTION,...]",
        help="with --device cuda: the configurations to time, in order. " + Variant.__doc__.split(". ", 1)[1],
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=["configs/model/pythia-410m.yml", "configs/model/pythia-1b.yml", "configs/model/pythia-160m.yml"],
        help="GPT-NeoX model YAMLs to time with --device cuda",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="with --device cuda: folder for figures")
    parser.add_argument(
        "--profile", metavar="SPEC", help="with --device cuda: the variant whose top kernels to profile"
    )
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="with --device cuda: run its code on the CPU instead, in fp32 at sequence 128 (try it before device time)",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, help="micro-batch (default: 8 on the CPU, 16 with --device cuda)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--zero", type=int, default=1, help="ZeRO stage of (c) on the CPU")
    parser.add_argument(
        "--layouts", action="store_true", help="time data, tensor and pipeline parallel 2 against each other"
    )
    args = parser.parse_args()
    if args.device == "cuda":
        args.batch = args.batch or (2 if args.rehearse else 16)
        return gpu_main(args)
    args.batch = args.batch or 8
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
        model_a, model_b = transformers_model(cfg), initialized(cfg, 0)
        loop_a = BareLoop(model_a, lambda x, y: logits_loss(model_a(x).logits, y))
        loop_b = BareLoop(model_b, lambda x, y: logits_loss(model_b(x), y))
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
