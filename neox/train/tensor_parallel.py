"""Megatron-style tensor parallelism on `torch.distributed`, as GPT-NeoX splits its model: the layers, and
`TensorParallelGPTNeoX`, our GPT-NeoX with its matmuls split over a tensor-parallel group.

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

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from neox.model.config import ModelConfig
from neox.model.gpt_neox import GPTNeoX, Layer, init_parameter


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

    SPLIT_DIMS = {"weight": 0, "bias": 0}  # the dimension of each dense tensor split over the group

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
        self.dense_shapes = {"weight": (out_features, in_features), "bias": (out_features,)}
        self.weight = nn.Parameter(torch.empty(rows, in_features))
        self.bias = nn.Parameter(torch.empty(rows)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(_CopyToGroup.apply(x, self.group), self.weight, self.bias)
        return _GatherFromGroup.apply(y, self.group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x Aᵀ + b with A's columns (the inputs) split over the group: takes this rank's slice of the input and
    returns the full output (partial products summed over the group; the bias added once, after the sum)."""

    SPLIT_DIMS = {"weight": 1, "bias": None}  # every rank holds the whole bias

    def __init__(self, in_features: int, out_features: int, group: dist.ProcessGroup | None, bias: bool = True):
        super().__init__()
        self.group = group
        self.start, columns = partition(in_features, group)
        self.dense_shapes = {"weight": (out_features, in_features), "bias": (out_features,)}
        self.weight = nn.Parameter(torch.empty(out_features, columns))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _ReduceFromGroup.apply(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """An embedding whose rows (the vocabulary) are split over the group: each rank looks up the ids it holds, the
    others give zeros, and the sum over the group is the full lookup."""

    SPLIT_DIMS = {"weight": 0}

    def __init__(self, vocab_size: int, hidden_size: int, group: dist.ProcessGroup | None):
        super().__init__()
        self.group = group
        self.start, rows = partition(vocab_size, group)
        self.dense_shapes = {"weight": (vocab_size, hidden_size)}
        self.weight = nn.Parameter(torch.empty(rows, hidden_size))

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


SPLIT_LAYERS = (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)


# Which dense modules `split_layer` and `TensorParallelGPTNeoX` replace, by the end of their names.
SPLIT_MODULES = {
    "attention.query_key_value": ColumnParallelLinear,
    "attention.dense": RowParallelLinear,
    "mlp.dense_h_to_4h": ColumnParallelLinear,
    "mlp.dense_4h_to_h": RowParallelLinear,
    "embed_in": VocabParallelEmbedding,
    "embed_out": ColumnParallelLinear,
}


def split_dim(name: str) -> int | None:
    """The dimension of the dense parameter `name` that tensor parallelism splits (None: held whole)."""
    module, _, short = name.rpartition(".")
    for suffix, layer in SPLIT_MODULES.items():
        if module == suffix or module.endswith("." + suffix):
            return layer.SPLIT_DIMS[short]
    return None


def parameters_with_split(module: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Module, int | None]]:
    """(dense name, parameter, its layer, the dimension split over the group or None) for every parameter."""
    for module_name, sub in module.named_modules():
        for short, param in sub.named_parameters(recurse=False):
            dim = sub.SPLIT_DIMS[short] if isinstance(sub, SPLIT_LAYERS) else None
            yield (f"{module_name}.{short}" if module_name else short), param, sub, dim


def part_index(layer: nn.Module, short: str, ndim: int) -> tuple[slice, ...]:
    """The index of this rank's part in the dense tensor of `layer`'s parameter `short` (all of it when not
    split)."""
    dim = layer.SPLIT_DIMS[short] if isinstance(layer, SPLIT_LAYERS) else None
    if dim is None:
        return (slice(None),) * ndim
    length = getattr(layer, short).shape[dim]
    return tuple(slice(layer.start, layer.start + length) if d == dim else slice(None) for d in range(ndim))


@torch.no_grad()
def load_shards(module: nn.Module, part: Callable[[str, tuple[int, ...], tuple[slice, ...]], torch.Tensor]) -> None:
    """Fill every parameter of `module` with `part(name, shape, index)`: the dense model's parameter `name` (of
    `shape`) at `index`, this rank's part of it (all of it for a parameter every rank holds whole), one parameter
    at a time."""
    for name, param, layer, dim in parameters_with_split(module):
        short = name.rpartition(".")[2]
        shape = layer.dense_shapes[short] if dim is not None else tuple(param.shape)
        param.copy_(part(name, shape, part_index(layer, short, len(shape))))


@torch.no_grad()
def gathered(module: nn.Module, group: dist.ProcessGroup | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(dense name, whole tensor) for every parameter, the split ones gathered from the group one at a time (so
    the peak is one whole tensor more than the shards); every rank of the group must iterate it in step."""
    for name, param, _, dim in parameters_with_split(module):
        if dim is None:
            yield name, param.detach()
            continue
        parts = [torch.empty_like(param) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, param.detach().contiguous(), group=group)
        yield name, torch.cat(parts, dim=dim)


def mark_split_parameters(module: nn.Module) -> None:
    """Tag the parameters each rank holds a different part of (`tensor_model_parallel`, Megatron's name), so
    DeepSpeed's gradient norm sums them over the group and counts every replicated parameter once."""
    for _, param, _, dim in parameters_with_split(module):
        param.tensor_model_parallel = dim is not None


def split_layer(layer: Layer, cfg: ModelConfig, group: dist.ProcessGroup | None) -> None:
    """Swap a transformer layer's four matmuls for their split versions, in place (built on the current device,
    the meta device when the caller materialises the shards afterwards)."""
    tp, hidden = dist.get_world_size(group), cfg.hidden_size
    if cfg.num_attention_heads % tp:
        raise ValueError(f"{cfg.num_attention_heads} attention heads do not split over {tp} tensor-parallel ranks")
    layer.attention.query_key_value = ColumnParallelLinear(hidden, 3 * hidden, group)
    layer.attention.dense = RowParallelLinear(hidden, hidden, group)
    layer.attention.num_heads = cfg.num_attention_heads // tp
    layer.mlp.dense_h_to_4h = ColumnParallelLinear(hidden, cfg.ffn_size, group)
    layer.mlp.dense_4h_to_h = RowParallelLinear(cfg.ffn_size, hidden, group)


def copy_to_group(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`x` as it is, its gradient summed over the group (the input of a column-parallel matmul)."""
    return _CopyToGroup.apply(x, group)


class TensorParallelGPTNeoX(GPTNeoX):
    """GPT-NeoX with its matmuls split over a tensor-parallel group: each rank holds whole attention heads
    (`query_key_value` column-parallel, `dense` row-parallel), a slice of the MLP (`dense_h_to_4h` column-,
    `dense_4h_to_h` row-parallel) and of the vocabulary (embedding, output layer). `forward` returns this rank's
    slice of the logits, for `vocab_parallel_cross_entropy`. Parameter names are the dense model's, and the model
    is built on the meta device and materialised shard by shard: no rank ever holds the whole of it. Its starting
    weights are slices of the dense model's for the same seed (`init_parameter`), whatever the group's size."""

    def __init__(self, cfg: ModelConfig, group: dist.ProcessGroup | None, seed: int = 0, device: str = "cpu"):
        with torch.device("meta"):
            super().__init__(cfg)
            self.embed_in = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, group)
            for layer in self.layers:
                split_layer(layer, cfg, group)
            if self.embed_out is not None:
                self.embed_out = ColumnParallelLinear(cfg.hidden_size, cfg.vocab_size, group, bias=False)
        self.group = group
        self.to_empty(device=device)
        load_shards(self, lambda name, shape, index: init_parameter(cfg, name, shape, seed)[index])
        mark_split_parameters(self)

    def output_layer(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed_out is not None:
            return self.embed_out(x)
        return F.linear(copy_to_group(x, self.group), self.embed_in.weight)  # tied: the embedding's rows
