"""The training loss from the last hidden states, without the full logits.

GPT-NeoX's output layer makes batch x sequence x vocabulary logits: for pythia-410m at 16 x 2048 tokens that is
6.6 GB in fp32, written, read back by the cross-entropy and again by its backward. A fused linear + cross-entropy
computes the loss and both gradients a chunk of tokens at a time, so only chunk x vocabulary logits ever exist:

- `chunked`: ours, in PyTorch (the CPU path, and a GPU path without extra packages);
- `liger`: liger-kernel's Triton kernel (GPU only; the optional `gpu` extra).

Both score only labels other than -100 (the fine-tuning mask) and return the mean over the scored tokens, as
`neox.train.pipeline.next_token_loss` does from full logits (`full`).
"""

from __future__ import annotations

import torch

from neox.data.dataset import IGNORE_INDEX
from neox.errors import ConfigError
from neox.train.kernels import liger

CHUNK_TOKENS = 1024  # pythia's vocabulary: 1024 x 50304 fp32 logits (and their gradient) = 0.4 GB at a time


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `labels`, chunk by chunk of tokens. The gradients are
    computed in the forward pass, while each chunk's logits exist (as liger-kernel does), and scaled in the
    backward: recomputing the logits there would double the matmul work."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        scored = labels != IGNORE_INDEX
        count = scored.sum().clamp(min=1)
        # Only the gradients autograd will ask for: none under no_grad (evaluation), no weight's for a frozen one
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            h, target, keep = hidden[part], labels[part].clamp(min=0), scored[part]
            logits = (h @ weight.T).float()
            log_z = torch.logsumexp(logits, dim=-1)
            total += ((log_z - logits.gather(1, target[:, None]).squeeze(1)) * keep).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            # d(mean loss)/d(logits) = (softmax - one-hot) on the scored rows, over the scored count
            grad = torch.exp(logits - log_z[:, None])
            grad[torch.arange(len(target), device=grad.device), target] -= 1.0
            grad *= (keep / count)[:, None]
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[part] = grad @ weight
            if grad_weight is not None:
                grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, kernel: str, chunk: int = CHUNK_TOKENS
) -> torch.Tensor:
    """The mean next-token loss over scored labels of `hidden` (..., h) through the output layer `weight` (v, h),
    by `kernel`: chunked (ours) or liger (liger-kernel's)."""
    flat, targets = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    if kernel == "chunked":
        return chunked_linear_cross_entropy(flat, weight, targets, chunk)
    if kernel == "liger":
        return liger_linear_cross_entropy(flat, weight, targets)
    raise ConfigError(f"unknown cross-entropy kernel {kernel!r}: full, chunked or liger")


def chunked_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = CHUNK_TOKENS
) -> torch.Tensor:
    return ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk)


def liger_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    liger_fused_linear_cross_entropy = liger("liger_fused_linear_cross_entropy", "train.cross_entropy", "chunked")
    # liger's kernel counts the tokens it ignores out of the mean as we do; an all-ignored batch gives 0
    scored = (labels != IGNORE_INDEX).any()
    loss = liger_fused_linear_cross_entropy(  # the output layer's gradient summed in fp32 over chunks, as ours
        hidden, weight, labels, ignore_index=IGNORE_INDEX, reduction="mean", accum_dtype=torch.float32
    )
    return loss if scored else loss * 0.0
