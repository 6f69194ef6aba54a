"""`neox plan`: how much memory each GPU needs under each model-parallel layout of a run, and which layout to use.

Model states are counted exactly: the parameters a rank holds (the most loaded pipeline stage, DeepSpeed's own
partition of the layers; tensor-parallel slices, the parameters every rank keeps whole) times the bytes DeepSpeed
keeps per parameter as `engine.py` configures it (ZeRO's accounting, Rajbhandari et al. 2020; tested against what
the engine holds). Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation", without
sequence parallelism) with the attention scores not stored (PyTorch's SDPA/FlashAttention), times the
micro-batches in flight on the first pipeline stage under 1F1B; the last stage adds the logits, their fp32 copy
and the saved log-softmax. Activations are an estimate, checked against a GPU's peak allocation only where one is
available. Communication buffers are DeepSpeed's default ZeRO bucket and the pipeline's send/receive buffers. Not
counted: the CUDA context and allocator fragmentation, hence the headroom.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from neox.model.config import ModelConfig
from neox.train.config import TrainConfig

GIB = 1 << 30
HEADROOM = 0.9  # of a GPU's memory a plan may use: the rest is the CUDA context and fragmentation
ZERO_BUCKET = 500_000_000  # DeepSpeed's default reduce/allgather bucket, in elements


@dataclasses.dataclass(frozen=True)
class Layout:
    tensor: int
    pipe: int
    data: int
    zero: int
    micro_batch: int
    accumulation: int  # micro-batches per step, so that the global batch is the config's


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes one GPU needs (its most loaded pipeline stage)."""

    parameters: int  # the number held, not bytes
    weights: int
    gradients: int
    optimizer: int
    activations: int  # without activation checkpointing
    activations_checkpointed: int
    buffers: int

    @property
    def model_states(self) -> int:
        return self.weights + self.gradients + self.optimizer

    def total(self, checkpointing: bool) -> int:
        activations = self.activations_checkpointed if checkpointing else self.activations
        return self.model_states + activations + self.buffers


def stage_pieces(cfg: ModelConfig, pipe: int) -> list[range]:
    """The pieces (0: embedding, 1..L: layers, L + 1: norm and output) of each stage, as DeepSpeed partitions them
    for `pipeline.py` (balancing the transformer layers)."""
    if pipe == 1:
        return [range(cfg.num_layers + 2)]
    partition_balanced = deepspeed_partition()
    layers = [0] + [1] * cfg.num_layers + [0]
    parts = partition_balanced(weights=layers, num_parts=pipe)
    return [range(parts[s], parts[s + 1]) for s in range(pipe)]


def deepspeed_partition():
    """DeepSpeed's own partition function, so that a plan's stages are the engine's. Imported with its accelerator
    named: left to detect one, DeepSpeed announces on stdout that it found no GPU, which a plan does not need."""
    named = "DS_ACCELERATOR" in os.environ
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        from deepspeed.runtime.utils import partition_balanced
    finally:
        if not named:
            del os.environ["DS_ACCELERATOR"]
    return partition_balanced


def piece_parameters(cfg: ModelConfig, piece: int, tensor: int, tied: bool) -> int:
    """Parameters one rank holds of a piece, split `tensor` ways (whole: LayerNorms and row-parallel biases)."""
    h, f, v = cfg.hidden_size, cfg.ffn_size, cfg.vocab_size
    if piece == 0:
        return v * h // tensor
    if piece == cfg.num_layers + 1:
        return 2 * h + (0 if tied else v * h // tensor)
    split = 3 * h * h + 3 * h + h * h + h * f + f + f * h
    return split // tensor + 2 * h + 4 * h


def stage_parameters(cfg: ModelConfig, tensor: int, pipe: int) -> list[int]:
    """Parameters one rank of each pipeline stage holds."""
    tied = not cfg.no_weight_tying
    return [sum(piece_parameters(cfg, p, tensor, tied) for p in pieces) for pieces in stage_pieces(cfg, pipe)]


def memory(cfg: ModelConfig, train: TrainConfig, layout: Layout, seq_length: int) -> Memory:
    """What one GPU needs under `layout`, for the stage that needs most."""
    return max(stage_memory(cfg, train, layout, seq_length), key=lambda m: m.total(train.activation_checkpointing))


def stage_memory(cfg: ModelConfig, train: TrainConfig, layout: Layout, seq_length: int) -> list[Memory]:
    """What one GPU of each pipeline stage needs under `layout`."""
    mixed = train.precision != "fp32"
    element = 2 if mixed else 4
    stages = stage_parameters(cfg, layout.tensor, layout.pipe)
    pieces = stage_pieces(cfg, layout.pipe)
    candidates = []
    for stage, (params, own) in enumerate(zip(stages, pieces, strict=True)):
        layers = sum(1 for p in own if 1 <= p <= cfg.num_layers)
        in_flight = min(layout.pipe - stage, layout.accumulation)  # 1F1B: stage s holds P - s micro-batches
        s, b, h = seq_length, layout.micro_batch, cfg.hidden_size
        per_layer = s * b * h * (10 + 24 // layout.tensor) * element // 2
        # the logits, their fp32 copy for the loss (bf16/fp16) and the saved log-softmax
        per_logit = element + 4 + (4 if mixed else 0)
        logits = per_logit * s * b * cfg.vocab_size // layout.tensor if cfg.num_layers + 1 in own else 0
        embedded = s * b * h * element if 0 in own else 0
        activations = in_flight * (layers * per_layer + embedded) + logits
        checkpointed = in_flight * (layers * s * b * h * element + embedded) + (per_layer if layers else 0) + logits
        candidates.append(
            Memory(
                parameters=params,
                weights=params * element // (layout.data if layout.zero == 3 else 1),
                gradients=gradient_bytes(params, layout, mixed),
                optimizer=optimizer_bytes(params, layout, mixed),
                activations=activations,
                activations_checkpointed=checkpointed,
                buffers=buffer_bytes(params, layout, s * b * h * element, mixed),
            )
        )
    return candidates


def gradient_bytes(params: int, layout: Layout, mixed: bool) -> int:
    """fp32: a gradient per parameter, accumulated over the micro-batches of a step (ZeRO-1; at the step's last
    backward they are reduced into this rank's partition, briefly held beside them); partitioned from ZeRO-2.
    bf16/fp16: the 16-bit gradients, and DeepSpeed's fp32 ones: for the whole rank in ZeRO-1 (its bf16 optimizer
    accumulates in fp32), partitioned from ZeRO-2."""
    d = layout.data
    if not mixed:
        return params * 4 // (d if layout.zero >= 2 else 1)
    if layout.zero >= 2:
        return params * 2 // (d if layout.zero == 3 else 1) + params * 4 // d
    return params * (2 + 4)


def optimizer_bytes(params: int, layout: Layout, mixed: bool) -> int:
    """Adam's two moments and the fp32 master weights (DeepSpeed keeps an fp32 partition even in fp32 under ZeRO),
    partitioned over the data-parallel ranks from ZeRO-1."""
    if layout.zero == 0:
        return params * (8 + (4 if mixed else 0))
    return params * 12 // layout.data


def buffer_bytes(params: int, layout: Layout, activation: int, mixed: bool) -> int:
    """ZeRO's reduce bucket (gradients on their way to their partition) and the pipeline's send and receive
    buffers of one micro-batch's hidden states."""
    bucket = min(ZERO_BUCKET, params) * (2 if mixed else 4) if layout.zero >= 1 and layout.data > 1 else 0
    return bucket + (2 * activation if layout.pipe > 1 else 0)


def candidate_layouts(cfg: ModelConfig, train: TrainConfig, gpus: int) -> Iterator[Layout]:
    """Every layout of `gpus` the model splits into and DeepSpeed runs, at the config's global batch and micro
    batch: tensor parallel within 8 GPUs (a node), pipeline stages up to the layers, ZeRO 1-3 where allowed."""
    batch = train.global_batch_size
    for tensor in (1, 2, 4, 8):
        if gpus % tensor or any(n % tensor for n in (cfg.num_attention_heads, cfg.ffn_size, cfg.vocab_size)):
            continue
        for pipe in range(1, min(cfg.num_layers, gpus // tensor) + 1):
            if gpus % (tensor * pipe) or (pipe > 1 and not cfg.no_weight_tying):
                continue
            data = gpus // (tensor * pipe)
            if batch % (data * train.micro_batch_size):
                continue
            accumulation = batch // (data * train.micro_batch_size)
            for zero in (1,) if pipe > 1 else ((1, 2) if tensor > 1 else (1, 2, 3)):
                yield Layout(tensor, pipe, data, zero, train.micro_batch_size, accumulation)


@dataclasses.dataclass(frozen=True)
class Planned:
    layout: Layout
    memory: Memory
    fits: bool  # with the config's activation checkpointing setting


def plan(cfg: ModelConfig, train: TrainConfig, gpus: int, gpu_gib: float) -> list[Planned]:
    """The candidate layouts, best first: those that fit before those that do not; among them ZeRO-3 last (it
    gathers every parameter over the data-parallel ranks, across nodes, for each micro-batch's forward and
    backward), then the least model parallelism (fewest GPUs per replica: the least communication and no or the
    smallest pipeline bubble), then fewer pipeline stages (tensor slices stay inside a node), then the lower ZeRO
    stage (less communication)."""
    budget = gpu_gib * GIB * HEADROOM
    planned = []
    for layout in candidate_layouts(cfg, train, gpus):
        need = memory(cfg, train, layout, train.seq_length)
        planned.append(Planned(layout, need, need.total(train.activation_checkpointing) <= budget))
    return sorted(
        planned,
        key=lambda p: (not p.fits, p.layout.zero == 3, p.layout.tensor * p.layout.pipe, p.layout.pipe, p.layout.zero),
    )


def table(planned: list[Planned], train: TrainConfig, gpu_gib: float) -> str:
    """The plan as the command prints it (GiB per GPU)."""
    checkpointing = "on" if train.activation_checkpointing else "off"
    rows = [
        f"{'TP':>3} {'PP':>3} {'DP':>4} {'ZeRO':>4} {'micro':>5} {'GAS':>4} {'params/GPU':>11} {'weights':>8} "
        f"{'grads':>7} {'optim':>7} {'act':>7} {'act(ckpt)':>9} {'buffers':>7} {'total':>7}  fits {gpu_gib:g} GiB"
    ]
    for p in planned:
        m, lay = p.memory, p.layout
        rows.append(
            f"{lay.tensor:>3} {lay.pipe:>3} {lay.data:>4} {lay.zero:>4} {lay.micro_batch:>5} {lay.accumulation:>4} "
            f"{m.parameters / 1e9:>10.2f}B {m.weights / GIB:>8.1f} {m.gradients / GIB:>7.1f} "
            f"{m.optimizer / GIB:>7.1f} {m.activations / GIB:>7.1f} {m.activations_checkpointed / GIB:>9.1f} "
            f"{m.buffers / GIB:>7.1f} {m.total(train.activation_checkpointing) / GIB:>7.1f}  "
            f"{'yes' if p.fits else 'no'}"
        )
    rows.append(f"(total with activation checkpointing {checkpointing}, as the config says; GiB per GPU)")
    return "\n".join(rows)


def recommendation(planned: list[Planned], train: TrainConfig) -> str:
    """One line saying which layout to use and the train: keys that select it."""
    if not planned:
        return "no layout of these GPUs keeps the config's global batch and micro batch: change either"
    best = planned[0]
    lay, m = best.layout, best.memory
    keys = (
        f"model_parallel_size: {lay.tensor}, pipe_parallel_size: {lay.pipe}, zero_stage: {lay.zero}, "
        f"gradient_accumulation_steps: {lay.accumulation}"
    )
    if not best.fits:
        return (
            f"nothing fits; the smallest need is {min(p.memory.total(True) for p in planned) / GIB:.1f} GiB per GPU "
            "with activation checkpointing: more GPUs, a smaller micro_batch_size or bigger GPUs"
        )
    return (
        f"recommended: tensor {lay.tensor} x pipeline {lay.pipe} x data {lay.data}, ZeRO-{lay.zero}, "
        f"{m.total(train.activation_checkpointing) / GIB:.1f} GiB per GPU (train: {keys})"
    )
