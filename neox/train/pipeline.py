"""Pipeline parallelism: GPT-NeoX as a DeepSpeed `PipelineModule` (1F1B schedule), as gpt-neox runs it.

The model is a list of pieces: the embedding, one piece per transformer layer, and the final LayerNorm with the
output layer; DeepSpeed gives each of `pipe_parallel_size` stages as equal a share of the transformer layers as
their number allows (the first stage also holds the embedding, the last the output layer) and passes hidden
states between stages. A stage builds only its own pieces, on the meta device, and initialises them from the
dense model's names (`init_parameter`), split over the tensor-parallel group when there is one, so every layout
starts from the same weights. The final export gathers each piece's tensors to rank 0, one tensor at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from neox.data.dataset import IGNORE_INDEX
from neox.model.checkpoint import dense_specs
from neox.model.config import ModelConfig
from neox.model.gpt_neox import Layer, init_parameter
from neox.model.rotary import rotary_cos_sin
from neox.train.parallel import ModelParallel
from neox.train.tensor_parallel import (
    ColumnParallelLinear,
    VocabParallelEmbedding,
    gathered,
    load_shards,
    mark_split_parameters,
    split_layer,
    vocab_parallel_cross_entropy,
)


class Piece(nn.Module):
    """A piece of the pipeline: `prefix` + a parameter's name is its name in the dense model."""

    prefix = ""

    def materialise(self, cfg: ModelConfig, seed: int) -> None:
        """Allocate the parameters built on the meta device and initialise them as the dense model would be."""
        self.to_empty(device="cpu")
        load_shards(self, lambda name, shape, index: init_parameter(cfg, self.prefix + name, shape, seed)[index])
        mark_split_parameters(self)


class EmbeddingPiece(Piece):
    """Token ids -> hidden states."""

    def __init__(self, cfg: ModelConfig, group: dist.ProcessGroup | None, seed: int):
        super().__init__()
        with torch.device("meta"):
            self.embed_in = (
                VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, group)
                if group is not None
                else nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            )
            self.emb_dropout = nn.Dropout(cfg.hidden_dropout)
        self.materialise(cfg, seed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb_dropout(self.embed_in(ids))


class LayerPiece(Layer, Piece):
    """Transformer layer `index`: hidden states -> hidden states (the rotary angles are recomputed per layer: a
    few kilobytes, cheaper than sending them between stages)."""

    def __init__(self, cfg: ModelConfig, group: dist.ProcessGroup | None, seed: int, index: int):
        with torch.device("meta"):
            Layer.__init__(self, cfg)
            if group is not None:
                split_layer(self, cfg, group)
        self.prefix = f"layers.{index}."
        self.cfg = cfg
        self.materialise(cfg, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = rotary_cos_sin(self.cfg.rotary_ndims, self.cfg.rotary_emb_base, 0, x.shape[1], x.device)
        return Layer.forward(self, x, cos, sin)


class OutputPiece(Piece):
    """Hidden states -> logits (this rank's slice of the vocabulary when split)."""

    def __init__(self, cfg: ModelConfig, group: dist.ProcessGroup | None, seed: int):
        super().__init__()
        with torch.device("meta"):
            self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
            self.embed_out = (
                ColumnParallelLinear(cfg.hidden_size, cfg.vocab_size, group, bias=False)
                if group is not None
                else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            )
        self.materialise(cfg, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_out(self.final_layer_norm(x))


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The mean next-token cross-entropy over the scored positions (labels other than -100, which fine-tuning
    gives prompt and padding), from the whole logits or (with a group) this rank's vocabulary slice."""
    scored = labels != IGNORE_INDEX
    if group is not None:
        total = (vocab_parallel_cross_entropy(logits, labels.masked_fill(~scored, 0), group) * scored).sum()
    else:
        flat = logits.float().reshape(-1, logits.shape[-1])
        total = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    # a micro-batch of prompts cut before their responses scores nothing: a zero loss, not 0/0
    return total / scored.sum().clamp(min=1)


def pipeline_model(cfg: ModelConfig, seed: int, parallel: ModelParallel, activation_checkpointing: bool):
    """The DeepSpeed PipelineModule of GPT-NeoX for this layout (its grid numbers ranks as `parallel` does)."""
    from deepspeed.pipe import LayerSpec, PipelineModule

    if not cfg.no_weight_tying:  # the tied output layer would live on another stage than the embedding
        raise ValueError("pipeline parallelism needs an untied output layer (no_weight_tying: true)")
    group = parallel.tensor_group if parallel.tensor_size > 1 else None
    pieces = [
        LayerSpec(EmbeddingPiece, cfg, group, seed),
        *(LayerSpec(LayerPiece, cfg, group, seed, i) for i in range(cfg.num_layers)),
        LayerSpec(OutputPiece, cfg, group, seed),
    ]
    model = PipelineModule(
        pieces,
        topology=topology(parallel),
        loss_fn=functools.partial(next_token_loss, group=group),
        partition_method="type:LayerPiece",  # balance the transformer layers, not the parameters, over stages
        activation_checkpoint_interval=0,  # our own, per layer, as without stages
    )
    if activation_checkpointing:
        from neox.train.engine import apply_activation_checkpointing

        apply_activation_checkpointing([piece for piece in model.forward_funcs if isinstance(piece, LayerPiece)])
    return model


def topology(parallel: ModelParallel):
    """DeepSpeed's process topology numbered as `ModelParallel` numbers ranks: data outermost, then the stage, then
    the tensor slice, so that a replica's stages are consecutive ranks (one node where they fit). DeepSpeed's own
    PipeModelDataParallelTopology puts the stage outermost, which spreads every replica over several nodes."""
    from deepspeed.runtime.pipe.topology import ProcessTopology

    return ProcessTopology(
        axes=["data", "pipe", "model"], dims=[parallel.data_size, parallel.pipe_size, parallel.tensor_size]
    )


def gathered_pipeline(model, parallel: ModelParallel, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(dense name, whole tensor) for every parameter of the pipelined model, on rank 0, in the dense model's
    order; every rank of the first data-parallel replica must iterate it in step (the others return at once).
    Each stage's tensor-parallel group gathers a tensor whole and its first rank sends it to rank 0."""
    if parallel.data_rank != 0:
        return
    rank = dist.get_rank()
    parts = model.parts  # piece i is on stage s when parts[s] <= i < parts[s + 1]
    mine = dict(zip(range(parts[parallel.pipe_rank], parts[parallel.pipe_rank + 1]), model.forward_funcs, strict=True))
    shapes = dict(dense_specs(cfg))
    for stage in range(parallel.pipe_size):
        owner = parallel.rank_of(stage, 0, 0)
        for index in range(parts[stage], parts[stage + 1]):
            if stage == parallel.pipe_rank:
                for name, tensor in gathered(mine[index], parallel.tensor_group if parallel.tensor_size > 1 else None):
                    whole = tensor.detach().float().contiguous()
                    if rank == owner and owner != 0:
                        dist.send(whole, dst=0)
                    elif rank == 0:
                        yield mine[index].prefix + name, whole.cpu()
            elif rank == 0:
                for name in piece_names(shapes, cfg.num_layers, index):
                    buffer = torch.empty(shapes[name], dtype=torch.float32, device=device_of(model))
                    dist.recv(buffer, src=owner)
                    yield name, buffer.cpu()


def piece_names(shapes: dict[str, tuple[int, ...]], num_layers: int, index: int) -> list[str]:
    """The dense names of piece `index`'s parameters, in the order its stage iterates them."""
    return [name for name in shapes if piece_of(name, num_layers)[0] == index]


def piece_of(name: str, num_layers: int) -> tuple[int, str]:
    """The piece holding the dense parameter `name`, and its name there."""
    if name.startswith("layers."):
        layer, _, local = name.removeprefix("layers.").partition(".")
        return int(layer) + 1, local
    return (0 if name.startswith("embed_in.") else num_layers + 1), name


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
