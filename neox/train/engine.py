"""The DeepSpeed engine around our GPT-NeoX: its DeepSpeed config, the optimizer's parameter groups, activation
checkpointing, and the model a worker starts from (fresh GPT-NeoX init, or `init_from` weights)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from neox.model.config import ModelConfig
from neox.model.gpt_neox import initialized
from neox.pipeline.layout import WEIGHTS_FILE
from neox.train.config import TrainConfig
from neox.train.cross_entropy import linear_cross_entropy
from neox.train.kernels import use_kernels
from neox.train.parallel import ModelParallel
from neox.train.pipeline import next_token_loss
from neox.train.schedule import lr_at


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """DeepSpeed's config for this run (see `effective_zero_stage` for a single model replica)."""
    stage = effective_zero_stage(cfg)
    config = {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.gradient_clipping,
        # torch's AdamW: DeepSpeed's fused CPU Adam would be JIT-compiled on first use (~100 s on 2 cores)
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": cfg.eps,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
                **({"fused": True} if cfg.fused_adamw else {}),  # DeepSpeed passes it on to torch.optim.AdamW
            },
        },
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16" and stage == 1:
        # gradients accumulate in fp32, as in GPT-NeoX's bf16 configs: DeepSpeed then runs its BF16 optimizer
        # (flat fp32 master weights). Stage 0 refuses that mix; stages 2-3 keep fp32 partitions of their own.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def effective_zero_stage(cfg: TrainConfig) -> int:
    """ZeRO shards state across data-parallel ranks: one fp32 rank has nothing to shard, and stages 1-3 would
    only add their flat-buffer bookkeeping (~15% of a CPU step), so it runs stage 0. In bf16/fp16 the stage stays:
    without ZeRO, DeepSpeed keeps the fp32 master weights in its per-parameter (unfused) optimizer wrapper,
    which measured 20% slower than a bare loop for the pythia-410m shape on an H100."""
    return cfg.zero_stage if cfg.num_workers > 1 or cfg.precision != "fp32" else 0


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """GPT-NeoX's split: no weight decay on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:  # frozen under LoRA
            continue
        (no_decay if name.endswith("bias") or "norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def apply_activation_checkpointing(layers: Iterable[torch.nn.Module]) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for layer in layers:
        forward = layer.forward
        layer.forward = lambda *args, _f=forward, **kwargs: checkpoint(_f, *args, use_reentrant=False, **kwargs)


def initial_model(cfg: TrainConfig, mcfg: ModelConfig, parallel: ModelParallel | None = None) -> torch.nn.Module:
    """GPT-NeoX's initialisation from the run's seed, or the `init_from` weights (continued pretraining; a
    checkpoint restored afterwards replaces either). Under model parallelism the model is split (`parallel`): over
    the tensor-parallel group, into pipeline stages, or both; each rank then builds and reads only its own part."""
    if parallel is not None and parallel.pipe_size > 1:
        from neox.train.pipeline import pipeline_model

        model = pipeline_model(mcfg, cfg.seed, parallel, cfg.activation_checkpointing)
        load_init_from(cfg, [(piece.prefix, piece) for piece in model.forward_funcs])
        return model
    if parallel is not None:
        from neox.train.tensor_parallel import TensorParallelGPTNeoX

        model = TensorParallelGPTNeoX(mcfg, parallel.tensor_group, cfg.seed)
        load_init_from(cfg, [("", model)])
    else:
        model = initialized(mcfg, cfg.seed)
        if cfg.init_from:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(Path(cfg.init_from) / WEIGHTS_FILE)))
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model.layers)
    if cfg.lora is not None:
        from neox.train.lora import with_lora

        model = with_lora(model, cfg.lora)
    return model


def load_init_from(cfg: TrainConfig, parts: list[tuple[str, torch.nn.Module]]) -> None:
    """Fill each (dense-name prefix, module) part with its slices of the `init_from` weights, reading each rank's
    part of each tensor alone."""
    if not cfg.init_from:
        return
    from safetensors import safe_open

    from neox.train.tensor_parallel import load_shards

    with safe_open(str(Path(cfg.init_from) / WEIGHTS_FILE), framework="pt") as weights:
        for prefix, module in parts:
            # get_slice reads this rank's rows or columns only, not the whole tensor
            load_shards(module, lambda name, shape, index, prefix=prefix: weights.get_slice(prefix + name)[index])


def build_engine(cfg: TrainConfig, mcfg: ModelConfig, parallel: ModelParallel | None = None):
    """The DeepSpeed engine training the run's model with AdamW and GPT-NeoX's learning-rate schedule; with
    `parallel`, over its data-parallel groups (a pipeline engine when it has stages, whose grid is the mpu)."""
    import deepspeed

    from neox.train.safe_load import install as install_safe_loading

    deepspeed.init_distributed()  # takes Ray Train's process group; a PipelineModule needs it before the engine
    model = initial_model(cfg, mcfg, parallel)
    use_kernels(model, cfg.layer_norm, cfg.rotary)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=parameter_groups(model, cfg.weight_decay),
        mpu=parallel if parallel is not None and parallel.pipe_size == 1 else None,
        config=deepspeed_config(cfg),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_at(s, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters, cfg.lr_decay_style) / cfg.lr
        ),
    )
    install_safe_loading(engine)  # checkpoints are read back from shared storage: no pickled code from there
    if parallel is not None and parallel.pipe_size > 1:
        grid = engine.grid  # our groups and DeepSpeed's must number the ranks alike, or batches go to the wrong ranks
        ours = (parallel.data_rank, parallel.pipe_rank, parallel.tensor_rank)
        theirs = (grid.get_data_parallel_rank(), grid.get_stage_id(), grid.get_slice_parallel_rank())
        if ours != theirs:
            raise RuntimeError(
                f"rank {grid.global_rank}: (data, stage, tensor) {ours} here, {theirs} in DeepSpeed's grid"
            )
    if cfg.compile:
        engine.compile()  # inside the engine, so checkpoints keep the plain module's parameter names
    return engine


def micro_batch_loss(
    model,
    cross_entropy: str,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    tensor_group=None,
) -> torch.Tensor:
    """The mean loss of one micro-batch through `model` (the engine, or a bare model, compiled or not; not
    pipelined): fused with the model's output layer when `cross_entropy` (train.cross_entropy) is not full, so the
    full logits never exist; else from the logits, under tensor parallelism from this rank's slice of the
    vocabulary (`tensor_group`), never gathered."""
    if cross_entropy != "full":
        return model(inputs, head=partial(linear_cross_entropy, labels=labels, kernel=cross_entropy))
    return next_token_loss(model(inputs), labels, tensor_group)


def loss_scale(engine) -> float:
    return float(getattr(engine.optimizer, "cur_scale", 1.0) or 1.0)
