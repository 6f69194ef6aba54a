"""Whether torch.compile can analyse the liger-kernel Triton kernels training uses (`train.layer_norm: liger`,
`train.rotary: liger`): LayerNorm and rotary, forward and backward.

Compiling a model that launches a user Triton kernel, torch reads the kernel's Triton IR to learn which tensors it
writes. Where that analysis fails, torch logs "assuming every input is mutated" and goes on; on an H200 with
torch 2.11 it failed for liger-kernel 0.8.5's LayerNorm forward (its `eps.to(...)`, with eps taken as a
compile-time constant) and the compiled loss was NaN from the first step (README, "Training on one GPU").

This runs torch's own analysis on each kernel with the arguments liger-kernel launches it with (the launch is
intercepted: nothing runs on a device) and prints, per kernel, the tensors it writes or why the analysis failed.
On a machine without a GPU the target is taken to be an sm90 GPU (H100/H200): Triton makes its IR without one.

    python bench/gpu/liger_compile_analysis.py      # needs torch, triton and liger-kernel; exit 1 if any fails
"""

from __future__ import annotations

import inspect
import logging
import sys

import torch
import triton


class Sm90:
    """Triton's driver, as far as making a kernel's IR asks: an sm90 GPU, for machines without one."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0


def launches(kernel, call) -> list[dict]:
    """The arguments (by name, defaults filled in) of each launch of `kernel` while `call()` runs, not launched."""
    seen = []
    parameters = inspect.signature(kernel.fn)

    def record(*args, grid=None, warmup=False, **kwargs):
        named = {k: v for k, v in kwargs.items() if k in parameters.parameters}  # not launch options (num_warps)
        bound = parameters.bind(*args, **named)
        bound.apply_defaults()
        seen.append(dict(bound.arguments))

    kernel.run = record
    try:
        call()
    finally:
        del kernel.run  # the class's own again
    return seen


def analyse(kernel, arguments: dict) -> dict:
    """torch's analysis of which tensors `kernel` writes. Where it fails, torch logs why and takes every tensor
    argument as written rather than raising: a kernel found writing all of them fails here (each of these reads at
    least one tensor it does not write), with the logged reason when there is one."""
    from torch._higher_order_ops import triton_kernel_wrap as wrap

    log = getattr(wrap, "log", logging.getLogger("torch._dynamo"))  # where torch logs the failure
    reasons: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info:
                reasons.append(f"{record.exc_info[0].__name__}: {str(record.exc_info[1]).strip().splitlines()[-1]}")

    # ours in place of torch's own handlers, which print a page of traceback per failure
    handlers, propagate = log.handlers, log.propagate
    log.handlers, log.propagate = [Catch()], False
    try:
        if hasattr(wrap, "identify_accessed_tensors"):  # torch 2.13
            writes = sorted(d.name for d in wrap.identify_accessed_tensors(kernel, arguments, {}).read_writes.writes)
        else:  # torch 2.11: the names of the tensors it mutates
            writes = sorted(wrap.identify_mutated_tensors(kernel, arguments, {}))
    finally:
        log.handlers, log.propagate = handlers, propagate
    tensors = {name for name, value in arguments.items() if isinstance(value, torch.Tensor)}
    if reasons or tensors <= set(writes):
        return {"ok": False, "error": reasons[0] if reasons else f"every tensor taken as written: {writes}"}
    return {"ok": True, "writes": writes}


def main() -> None:
    from liger_kernel.ops import layer_norm, rope

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        triton.runtime.driver.set_active(Sm90())
    device = "cuda" if on_gpu else "cpu"
    rows, hidden, batch, heads, seq, head_size, rotated = 64, 1024, 2, 16, 64, 64, 16  # pythia-410m's widths
    x, w, b, grad = (
        torch.randn(*shape, device=device) for shape in ((rows, hidden), (hidden,), (hidden,), (rows, hidden))
    )
    mean, rstd = torch.zeros(rows, device=device), torch.ones(rows, device=device)
    q, k = (torch.randn(batch, heads, seq, head_size, device=device) for _ in "qk")
    cos, sin = torch.randn(seq, rotated, device=device), torch.randn(seq, rotated, device=device)
    calls = {
        "layer_norm forward": (
            layer_norm._layer_norm_forward_kernel,
            lambda: layer_norm.layer_norm_forward(x, w, b, 1e-5),
        ),
        "layer_norm backward": (
            layer_norm._layer_norm_backward_kernel,
            lambda: layer_norm.layer_norm_backward(grad, x, w, b, mean, rstd),
        ),
        "rotary forward": (rope._triton_rope, lambda: rope.rope_forward(q, k, cos, sin)),
        "rotary backward": (rope._triton_rope, lambda: rope.rope_backward(q, k, cos, sin)),
    }
    print(f"torch {torch.__version__}, triton {triton.__version__}, target {'this GPU' if on_gpu else 'sm90 (no GPU)'}")
    results = {}
    for name, (kernel, call) in calls.items():
        try:  # another torch or liger-kernel may analyse, or launch, differently: a failed line, not the end
            (arguments,) = launches(kernel, call)
            results[name] = analyse(kernel, arguments)
        except Exception as error:
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
        found = results[name]
        print(
            f"{'ok  ' if found['ok'] else 'FAIL'} {name}: "
            + (f"writes {found['writes']}" if found["ok"] else found["error"])
        )
    sys.exit(0 if all(r["ok"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
