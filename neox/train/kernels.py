"""liger-kernel's fused LayerNorm and rotary in place of PyTorch's, for training on GPUs (`train.layer_norm`,
`train.rotary`).

The swap keeps every parameter under its name, so checkpoints, exports and the model evaluation loads are the same
whichever kernels trained them. Pythia's partial rotary (the first quarter of each head's dims) needs no slicing
here: liger-kernel rotates as many leading dims as cos/sin are wide and leaves the rest untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neox.errors import ConfigError
from neox.model.gpt_neox import Attention

LayerNormKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]
RotaryKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class KernelLayerNorm(nn.LayerNorm):
    """A LayerNorm computed by `kernel(x, weight, bias, eps)`, holding the parameters of the one it replaces."""

    def __init__(self, norm: nn.LayerNorm, kernel: LayerNormKernel):
        super().__init__(norm.normalized_shape, eps=norm.eps, bias=norm.bias is not None, device="meta")
        self.weight, self.bias = norm.weight, norm.bias
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, self.weight, self.bias, self.eps)


def replace_layer_norms(model: nn.Module, kernel: LayerNormKernel) -> int:
    """Put a `KernelLayerNorm` in place of each of `model`'s LayerNorms; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                setattr(parent, name, KernelLayerNorm(child, kernel))
                replaced += 1
    return replaced


def replace_rotary(model: nn.Module, kernel: RotaryKernel) -> int:
    """Make every attention layer of `model` rotate its queries and keys with `kernel`; returns how many."""
    attentions = [module for module in model.modules() if isinstance(module, Attention)]
    for attention in attentions:
        attention.rotary = kernel
    return len(attentions)


def use_kernels(model: nn.Module, layer_norm: str, rotary: str) -> None:
    """Apply the run's `train.layer_norm` and `train.rotary` choices to `model` (torch: leave it as it is)."""
    if layer_norm == "liger":
        replace_layer_norms(model, liger("liger_layer_norm", "train.layer_norm", "torch"))
    if rotary == "liger":
        replace_rotary(model, liger("liger_rope", "train.rotary", "torch"))


def liger(name: str, setting: str, cpu_choice: str) -> Callable:
    """liger-kernel's functional `name`, or a ConfigError naming `setting` (and its CPU choice) when liger-kernel
    is not installed."""
    try:
        from liger_kernel.transformers import functional
    except ImportError:
        raise ConfigError(
            f"{setting}: liger needs liger-kernel, the `gpu` extra (pip install -e '.[gpu]' on a GPU machine); "
            f"use {cpu_choice} on the CPU"
        ) from None
    return getattr(functional, name)
