"""Rotary position embeddings as GPT-NeoX applies them: the non-interleaved "rotate half" form on the
first `rotary_ndims` dims of each head, the rest passed through unrotated."""

from __future__ import annotations

import torch


def rotary_cos_sin(
    rotary_ndims: int, base: int, start: int, length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (length, rotary_ndims) for positions start..start+length-1, in float32.

    Computed on the fly (a few KFLOPs) rather than kept as buffers, so a model built on the meta device
    and loaded later needs no re-initialisation of position tables.
    """
    inv_freq = 1.0 / (
        base ** (torch.arange(0, rotary_ndims, 2, device=device, dtype=torch.int64).float() / rotary_ndims)
    )
    positions = torch.arange(start, start + length, device=device, dtype=torch.int64).float()
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (batch, heads, seq, head_size); pass the rest through."""
    ndims = cos.shape[-1]
    # split, not two slices: its backward joins the two gradients in one cat, where each slice's backward filled
    # a zero tensor of x's whole shape and the two were then added
    rot, passthrough = x.split((ndims, x.shape[-1] - ndims), dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((rot * cos + _rotate_half(rot) * sin, passthrough), dim=-1)


def rotate_query_key(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k rotated alike: the PyTorch path of `Attention.rotary`, with the signature of liger-kernel's fused
    rotary (which `train.rotary: liger` puts in its place)."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
