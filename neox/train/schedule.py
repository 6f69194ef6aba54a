"""GPT-NeoX's learning-rate schedule (its AnnealingLR): linear warmup, then decay to `min_lr`."""

from __future__ import annotations

import math

from neox.errors import ConfigError


def lr_at(step: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int, style: str = "cosine") -> float:
    """Learning rate at optimizer step `step` (0-based count of steps taken)."""
    if warmup_iters > 0 and step <= warmup_iters:
        return lr * step / warmup_iters
    if style == "constant":
        return lr
    progress = min(step - warmup_iters, decay_iters - warmup_iters)
    span = max(decay_iters - warmup_iters, 1)
    if style == "cosine":
        value = min_lr + (lr - min_lr) / 2.0 * (math.cos(math.pi * progress / span) + 1)
    elif style == "linear":
        value = lr * (span - progress) / span
    else:
        raise ConfigError(f"lr_decay_style must be cosine, linear or constant, got {style!r}")
    return max(value, min_lr)
