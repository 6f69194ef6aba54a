"""GPU correctness checks of the training kernels and the DeepSpeed engine, one run, figures to one JSON file.
Run on a GPU machine (without Ray: the engine is driven directly, as `bench/train_step.py --device cuda` does);
`--device cpu` runs the same checks on a small shape, to try the script before device time is spent.

1. kernels: the chunked linear + cross-entropy (and liger-kernel's, when installed) against the full logits, loss
   and both gradients, in fp32 (within 1e-5 relative) and bf16 (within 1e-2 relative);
2. precision: 50 steps of the shape in bf16 and in fp32 from the same init and batches; the last 10 steps' mean
   loss within 1%;
3. activation checkpointing: the same steps' losses with and without it (fp32), within 1e-5 relative on the
   CPU, 1e-4 on a GPU (whose fp32 attention backward sums in no fixed order);
4. resume: an engine checkpoint saved at step 10 and loaded into a fresh engine continues to the losses of the
   uninterrupted run: the first bitwise, the later ones within 1e-5 relative on the CPU, 1e-3 in bf16 on a GPU
   (whose atomics in the backward change the last bits of the weights from step to step);
5. the engine with train.cross_entropy chunked and train.fused_adamw: the fp32 run's first 10 losses within 1e-4;
6. with liger-kernel on a GPU (its absence fails there): its LayerNorm and rotary (Pythia's partial slice, and a
   rotated width that is no power of two, neox-20b's) against ours as in 1; on the CPU with TRITON_INTERPRET=1
   (and triton and liger-kernel installed), its loss and rotary in Triton's interpreter;
7. last, the engine in bf16 with fused AdamW and the fused kernels (on a GPU every liger kernel; then compiled
   (train.compile) with liger's loss, with liger's loss and rotary, and on torch 2.13 or newer with every liger
   kernel; on the CPU the chunked loss), each with its
   last 10 steps' mean loss within 1% of fp32's (as in 2).

A kernel that fails to import or compile is a failed check; the others still run.

Every error must be finite: a NaN fails.

    python bench/gpu_checks.py --out DIR [--model configs/model/pythia-160m.yml] [--batch 8] [--seq 512]
    .venv/bin/python bench/gpu_checks.py --device cpu --out /tmp/checks        # the small CPU shape
    TRITON_INTERPRET=1 PYTHONPATH=<triton and liger-kernel> .venv/bin/python bench/gpu_checks.py --device cpu ...
"""

from __future__ import annotations

import os
import sys

# Run as a file, this folder leads sys.path and bench/tokenize.py would shadow the standard library's
# `tokenize` (imported by numpy and others): take the folder off the path before anything else is imported.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

CPU_SHAPE = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "rotary_pct": 0.25,
    "gpt_j_residual": True,
    "no_weight_tying": True,
}


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-30))


def within(errors, tolerance: float) -> bool:
    """Every error finite and within `tolerance` (max() alone would let a NaN after the first one pass)."""
    errors = list(errors)
    return bool(errors) and all(math.isfinite(e) and e <= tolerance for e in errors)


def gaps(got: list[float], want: list[float]) -> list[float]:
    return [abs(a - b) / abs(b) for a, b in zip(got, want, strict=True)]


def compare(reference, kernel, inputs: list[torch.Tensor], device: torch.device) -> dict:
    """`kernel` against `reference` (run in fp32) on the same inputs: each output and the gradient of each float
    input, under a fixed random upstream gradient per output, in fp32 (within 1e-5 relative) and bf16 (1e-2)."""

    def run(fn, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        leaves = [
            t.to(device, dtype).detach().clone().requires_grad_() if t.is_floating_point() else t.to(device)
            for t in inputs
        ]
        outputs = fn(*leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        generator = torch.Generator().manual_seed(1)
        upstream = [torch.randn(o.shape, generator=generator).to(device) for o in outputs]
        sum((o.float() * g).sum() for o, g in zip(outputs, upstream, strict=True)).backward()
        found = {f"out{i}": o.detach() for i, o in enumerate(outputs)}
        found.update({f"grad{i}": t.grad for i, t in enumerate(leaves) if t.grad is not None})
        return found

    want = run(reference, torch.float32)
    results = {}
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        got = run(kernel, dtype)
        # every output and gradient the reference has: a kernel that drops a gradient fails
        errors = {name: relative(got[name], w) if name in got else math.inf for name, w in want.items()}
        results[str(dtype).removeprefix("torch.")] = {
            **errors,
            "tolerance": tolerance,
            "ok": within(errors.values(), tolerance),
        }
    return results


def kernel_checks(device: torch.device, vocab: int, hidden: int, heads: int, rotary_ndims: int) -> dict:
    """Each available kernel against its PyTorch reference: the fused losses (chunked, and liger-kernel's) against
    the full logits; liger-kernel's LayerNorm and rotary (Pythia's partial slice) against ours."""
    from functools import partial

    import torch.nn.functional as F

    from neox.model.rotary import rotary_cos_sin, rotate_query_key
    from neox.train.cross_entropy import linear_cross_entropy
    from neox.train.pipeline import next_token_loss

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, hidden, generator=generator)
    w = torch.randn(vocab, hidden, generator=generator) / hidden**0.5
    labels = torch.randint(0, vocab, (2048,), generator=generator)
    labels[:100] = -100
    full = lambda x, w, labels: next_token_loss(x @ w.T, labels, None)  # noqa: E731
    results = {
        "cross_entropy chunked": compare(full, partial(linear_cross_entropy, kernel="chunked"), [x, w, labels], device)
    }
    # On the CPU, Triton's interpreter (TRITON_INTERPRET=1, triton and liger-kernel installed) runs liger-kernel's
    # loss and rotary, slowly: their arithmetic checked without a GPU. Not its LayerNorm, whose `eps.to(...)` fails
    # there: the interpreter hands scalars over as Python floats (as torch 2.11's compile did)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interpreted:
        return results
    try:  # a failing import or Triton compile is a failed check, not the end of the run's other checks
        from liger_kernel.transformers.functional import liger_layer_norm, liger_rope
    except Exception as error:
        return results | {"liger-kernel": failed(error)}

    norm_in = [torch.randn(4096, hidden, generator=generator), 1 + 0.1 * torch.randn(hidden, generator=generator)]
    norm_in.append(0.1 * torch.randn(hidden, generator=generator))
    layer_norm = lambda x, w, b: F.layer_norm(x, w.shape, w, b, 1e-5)  # noqa: E731

    def rotary(heads: int, head_size: int, rotary_ndims: int) -> dict:
        q, k = (torch.randn(4, heads, 512, head_size, generator=generator) for _ in range(2))
        # the angles stay fp32, as the model passes them; only q and k take the checked precision
        cos, sin = (t.to(device) for t in rotary_cos_sin(rotary_ndims, 10000, 0, 512, torch.device("cpu")))
        reference = lambda q, k: rotate_query_key(q, k, cos, sin)  # noqa: E731
        return compare(reference, lambda q, k: liger_rope(q, k, cos, sin), [q, k], device)

    checks = {
        "cross_entropy liger": lambda: compare(
            full, partial(linear_cross_entropy, kernel="liger"), [x, w, labels], device
        ),
        "layer_norm liger": lambda: compare(
            layer_norm, lambda x, w, b: liger_layer_norm(x, w, b, 1e-5), norm_in, device
        ),
        "rotary liger": lambda: rotary(heads, hidden // heads, rotary_ndims),
        # a rotated width that is no power of two, which the kernel pads and masks: neox-20b's 24 of 96 (its 64
        # heads split over 2 tensor-parallel ranks), as pythia-2.8b's 20 of 80
        "rotary liger, 24 of 96 dims": lambda: rotary(32, 96, 24),
    }
    if device.type != "cuda":
        del checks["layer_norm liger"]
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as error:
            results[name] = failed(error)
    return results


def failed(error: Exception) -> dict:
    return {"error": {"message": f"{type(error).__name__}: {error}"[:500], "ok": False}}


def engine_losses(model_yaml: Path, args, steps: int, save_at: int | None = None, load: Path | None = None, **train):
    """Losses of `steps` steps of the DeepSpeed engine as the training loop configures it, on fixed batches."""
    from neox.model.config import load_model_config
    from neox.train.config import TrainConfig, check_layout
    from neox.train.engine import build_engine, micro_batch_loss

    cfg = TrainConfig(
        model=(str(model_yaml),),
        seq_length=args.seq,
        micro_batch_size=args.batch,
        num_workers=1,
        use_gpu=args.device == "cuda",
        train_iters=steps,
        lr_decay_iters=args.steps,  # one schedule for every run, whatever its length, so their steps compare
        lr=3e-4,
        min_lr=3e-5,
        warmup=0.1,
        seed=1,
        **train,
    )
    mcfg, _ = load_model_config(model_yaml, vocab_size=args.vocab)
    check_layout(cfg, mcfg)  # what a run with these settings would be refused
    engine = build_engine(cfg, mcfg)
    start = 0
    if load is not None:
        engine.load_checkpoint(str(load), tag="step")
        start = save_at
    device = next(engine.module.parameters()).device
    generator = torch.Generator().manual_seed(7)
    # a learnable stream: each sequence counts up from a random start, so the loss falls within a few steps
    batches = [
        (torch.randint(0, mcfg.vocab_size, (args.batch, 1), generator=generator) + torch.arange(args.seq + 1))
        % mcfg.vocab_size
        for _ in range(steps)
    ]
    losses = []
    for step in range(start, steps):
        tokens = batches[step].to(device)
        loss = micro_batch_loss(engine, cfg.cross_entropy, tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if save_at is not None and load is None and step + 1 == save_at:
            engine.save_checkpoint(str(args.work / "resume"), tag="step")
    engine.destroy()
    del engine
    while gc.collect():  # parameters are views of DeepSpeed's flat buffer: a second pass frees them
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", default="configs/model/pythia-160m.yml", help="model YAML (cuda; cpu: a tiny one)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=50277, help="tokenizer vocabulary (padded as GPT-NeoX pads it)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True, help="folder for checks.json")
    args = parser.parse_args()
    import deepspeed
    import yaml

    from neox.model.config import load_model_config
    from neox.train.config import compile_drops_liger_layer_norm

    args.out.mkdir(parents=True, exist_ok=True)

    def save(report: dict) -> None:  # after each part: a run cut short by the device's time limit keeps the rest
        (args.out / "checks.json").write_text(json.dumps(report, indent=1))

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29519")
    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        model_yaml = Path(args.model)
        if args.device == "cpu":
            model_yaml = args.work / "tiny.yml"
            model_yaml.write_text(yaml.safe_dump(CPU_SHAPE))
            args.batch, args.seq, args.vocab, args.steps = 4, 64, 512, min(args.steps, 20)
        device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
        report = {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "liger_kernel": importlib.util.find_spec("liger_kernel") is not None,
            "model": str(args.model),
            "batch": args.batch,
            "seq": args.seq,
        }
        model_cfg, _ = load_model_config(model_yaml, vocab_size=args.vocab)
        report["kernels"] = kernel_checks(
            device, model_cfg.vocab_size, model_cfg.hidden_size, model_cfg.num_attention_heads, model_cfg.rotary_ndims
        )
        print(json.dumps(report["kernels"], indent=1), flush=True)
        save(report)

        precision = "bf16" if args.device == "cuda" else "fp32"  # bf16 on the CPU engine: not what is checked
        full = engine_losses(model_yaml, args, args.steps, precision="fp32")  # the reference of what follows
        last = slice(-10, None)

        def last10_gap(losses: list[float]) -> float:
            return abs(sum(losses[last]) - sum(full[last])) / sum(full[last])

        low = engine_losses(model_yaml, args, args.steps, precision=precision)
        gap = last10_gap(low)
        report["precision"] = {  # keyed by what ran: the CPU rehearsal compares fp32 with itself
            precision if precision != "fp32" else "fp32 (rehearsal, in place of bf16)": low,
            "fp32": full,
            "last10_relative_gap": gap,
            "ok": within([gap], 0.01),
        }
        save(report)

        checkpointed = engine_losses(model_yaml, args, 10, precision="fp32", activation_checkpointing=True)
        worst = gaps(checkpointed, full[:10])
        # A GPU's fp32 attention backward (memory-efficient SDPA) sums in no fixed order: later losses drift in the
        # last bits there with or without checkpointing
        tolerance = 1e-5 if args.device == "cpu" else 1e-4
        report["activation_checkpointing"] = {
            "max_relative_gap": max(worst),
            "tolerance": tolerance,
            "ok": within(worst, tolerance),
        }
        save(report)

        straight = engine_losses(model_yaml, args, 20, save_at=10, precision=precision)
        resumed = engine_losses(model_yaml, args, 20, save_at=10, load=args.work / "resume", precision=precision)
        worst = gaps(resumed, straight[10:])
        # The first resumed loss depends on the restored state alone: bitwise equal. Later ones also on the
        # backward, where a GPU's atomics (embedding, attention) change the last bits of bf16 weights step by step.
        later = 1e-5 if args.device == "cpu" else 1e-3
        report["resume"] = {
            "straight": straight[10:],
            "resumed": resumed,
            "max_relative_gap": max(worst),
            "later_tolerance": later,
            "ok": resumed[0] == straight[10] and within(worst, later),
        }
        save(report)

        chunked = engine_losses(model_yaml, args, 10, precision="fp32", cross_entropy="chunked", fused_adamw=True)
        worst = gaps(chunked, full[:10])
        report["engine_chunked_fused_adamw"] = {"max_relative_gap": max(worst), "ok": within(worst, 1e-4)}
        save(report)

        # Last, as compiling takes a minute: the fused kernels through the engine in bf16 against fp32. On a GPU
        # every liger kernel (pile-pythia-160m's default), then compiled with liger's loss (compile fuses the
        # LayerNorms itself), then also with liger's rotary, and on torch 2.13 or newer every liger kernel compiled
        # (refused before 2.13, which dropped liger's LayerNorm: `compile_drops_liger_layer_norm`). On the CPU our
        # chunked loss, where bf16 is what once lost the output layer's gradient (DeepSpeed's BF16 optimizer), and
        # not compiled: torch 2.13's CPU inductor fails to build a kernel of the bf16 backward there (refused).
        variants: dict[str, dict] = {}
        if args.device == "cpu":
            variants["engine_chunked_bf16"] = dict(cross_entropy="chunked")
        elif "rotary liger" in report["kernels"]:  # liger-kernel imported
            variants["engine_liger_bf16"] = dict(cross_entropy="liger", layer_norm="liger", rotary="liger")
            variants["engine_liger_loss_compile_bf16"] = dict(cross_entropy="liger", compile=True)
            variants["engine_liger_loss_rotary_compile_bf16"] = dict(
                cross_entropy="liger", rotary="liger", compile=True
            )
            if not compile_drops_liger_layer_norm(torch.__version__):
                variants["engine_liger_compile_bf16"] = variants["engine_liger_bf16"] | {"compile": True}
        for name, kernels in variants.items():
            try:
                losses = engine_losses(model_yaml, args, args.steps, precision="bf16", fused_adamw=True, **kernels)
                gap = last10_gap(losses)
                report[name] = {"losses": losses, "last10_relative_gap_to_fp32": gap, "ok": within([gap], 0.01)}
            except Exception as error:
                report[name] = failed(error)["error"]
            finally:
                torch._dynamo.reset()  # the compiled graphs go with the engine, also one that failed
            save(report)
    verdicts = {name: part["ok"] for name, part in report.items() if isinstance(part, dict) and "ok" in part}
    verdicts.update(
        {
            f"kernel {name} {dtype}": part["ok"]
            for name, kernel in report["kernels"].items()
            for dtype, part in kernel.items()
        }
    )
    if args.device == "cuda":  # liger-kernel's checks are what a GPU run is for: missing is failing
        verdicts["liger-kernel installed"] = report["liger_kernel"]
    for name, ok in verdicts.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    sys.exit(0 if all(verdicts.values()) else 1)


if __name__ == "__main__":
    main()
