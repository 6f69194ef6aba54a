"""Megatron-style tensor-parallel layers on `torch.distributed`, as GPT-NeoX splits its model (issue 16's first
slice: the layers and their exact equivalence to the dense ones; the model's use of them comes next).

Within a tensor-parallel group of `tp` ranks:
- `ColumnParallelLinear` holds out_features / tp rows of the weight (GPT-NeoX's fused `query_key_value`, laid out
  head by head, so a contiguous split gives each rank whole heads, and `dense_h_to_4h`): its input is the full
  activation, its output this rank's slice;
- `RowParallelLinear` holds in_features / tp columns (`dense`, `dense_4h_to_h`): its input is a slice, its output
  the full activation after a sum over the group;
- `VocabParallelEmbedding` holds vocab / tp rows of the embedding; `vocab_parallel_cross_entropy` takes each rank's
  slice of the logits and never gathers the full vocabulary.

The communication is written as autograd functions (identity one way, all-reduce the other), so gradients are
those of the dense layer; the tests check forward and backward against it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def partition(size: int, group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(start, length) of this rank's contiguous slice of a dimension of `size` split over the group."""
    tp, rank = dist.get_world_size(group), dist.get_rank(group)
    if size % tp:
        raise ValueError(f"a dimension of {size} does not split over {tp} tensor-parallel ranks")
    return rank * (size // tp), size // tp


class _CopyToGroup(torch.autograd.Function):
    """Forward: the input as it is (every rank holds it whole). Backward: the gradients' sum over the group."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromGroup(torch.autograd.Function):
    """Forward: the sum of every rank's partial result. Backward: the gradient as it is."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GatherFromGroup(torch.autograd.Function):
    """Forward: every rank's slice of the last dimension, concatenated. Backward: this rank's slice of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        start, length = partition(grad.shape[-1], ctx.group)
        return grad[..., start : start + length].contiguous(), None


class ColumnParallelLinear(nn.Module):
    """y = x Aᵀ + b with A's rows (the outputs) split over the group; returns this rank's outputs, or all of them
    with `gather_output`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group: dist.ProcessGroup | None,
        bias: bool = True,
        gather_output: bool = False,
    ):
        super().__init__()
        self.group, self.gather_output = group, gather_output
        self.start, rows = partition(out_features, group)
        self.weight = nn.Parameter(torch.empty(rows, in_features))
        self.bias = nn.Parameter(torch.zeros(rows)) if bias else None

    def load_dense(self, dense: nn.Linear) -> None:
        """Take this rank's rows of a dense layer's weights."""
        rows = slice(self.start, self.start + self.weight.shape[0])
        with torch.no_grad():
            self.weight.copy_(dense.weight[rows])
            if self.bias is not None:
                self.bias.copy_(dense.bias[rows])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(_CopyToGroup.apply(x, self.group), self.weight, self.bias)
        return _GatherFromGroup.apply(y, self.group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x Aᵀ + b with A's columns (the inputs) split over the group: takes this rank's slice of the input and
    returns the full output (partial products summed over the group; the bias added once, after the sum)."""

    def __init__(self, in_features: int, out_features: int, group: dist.ProcessGroup | None, bias: bool = True):
        super().__init__()
        self.group = group
        self.start, columns = partition(in_features, group)
        self.weight = nn.Parameter(torch.empty(out_features, columns))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def load_dense(self, dense: nn.Linear) -> None:
        """Take this rank's columns of a dense layer's weights (and the whole bias)."""
        with torch.no_grad():
            self.weight.copy_(dense.weight[:, self.start : self.start + self.weight.shape[1]])
            if self.bias is not None:
                self.bias.copy_(dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _ReduceFromGroup.apply(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """An embedding whose rows (the vocabulary) are split over the group: each rank looks up the ids it holds, the
    others give zeros, and the sum over the group is the full lookup."""

    def __init__(self, vocab_size: int, hidden_size: int, group: dist.ProcessGroup | None):
        super().__init__()
        self.group = group
        self.start, rows = partition(vocab_size, group)
        self.weight = nn.Parameter(torch.empty(rows, hidden_size))

    def load_dense(self, dense: nn.Embedding) -> None:
        with torch.no_grad():
            self.weight.copy_(dense.weight[self.start : self.start + self.weight.shape[0]])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        found = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return _ReduceFromGroup.apply(found, self.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        start, length = partition(logits.shape[-1] * dist.get_world_size(group), group)
        logits = logits.float()
        top = logits.max(dim=-1).values
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)  # for a stable softmax over the whole vocabulary
        shifted = logits - top.unsqueeze(-1)
        local = target - start
        mine = (local >= 0) & (local < length)
        target_logit = shifted.gather(-1, local.clamp(0, length - 1).unsqueeze(-1)).squeeze(-1) * mine
        exp = shifted.exp()
        total = exp.sum(dim=-1)
        dist.all_reduce(target_logit, group=group)
        dist.all_reduce(total, group=group)
        softmax = exp / total.unsqueeze(-1)
        ctx.save_for_backward(softmax, local, mine)
        return total.log() - target_logit

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        softmax, local, mine = ctx.saved_tensors
        onehot = torch.zeros_like(softmax).scatter_(-1, local.clamp(0, softmax.shape[-1] - 1).unsqueeze(-1), 1.0)
        grad_logits = (softmax - onehot * mine.unsqueeze(-1)) * grad.unsqueeze(-1)
        return grad_logits, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """Per-token cross-entropy from each rank's slice of the vocabulary's logits (the full logits are never
    gathered); reduce it (e.g. `.mean()`) as the dense loss would be."""
    return _VocabParallelCrossEntropy.apply(logits, target, group)
