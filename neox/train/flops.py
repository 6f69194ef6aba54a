"""Model FLOPs per step, GPT-NeoX's formula, and the peak dense bf16 TFLOPS of GPUs we know, for MFU."""

from __future__ import annotations

from neox.model.config import ModelConfig

PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0}  # bf16 dense, per GPU


def flops_per_step(cfg: ModelConfig, global_batch: int, seq_length: int, activation_checkpointing: bool) -> float:
    """GPT-NeoX's `get_flops`: 24·f·B·s·L·h²·(1 + s/(6h) + V/(16·L·h)), f = 4 with activation
    checkpointing (the forward runs twice) else 3."""
    factor = 4 if activation_checkpointing else 3
    h, layers = cfg.hidden_size, cfg.num_layers
    return (
        24
        * factor
        * global_batch
        * seq_length
        * layers
        * h**2
        * (1 + seq_length / (6 * h) + cfg.vocab_size / (16 * layers * h))
    )


def per_gpu_rates(
    cfg: ModelConfig,
    global_batch: int,
    seq_length: int,
    activation_checkpointing: bool,
    step_seconds: float,
    gpus: int,
    peak_tflops: float,
) -> dict[str, float]:
    """train/tflops_per_gpu: what each GPU computed, the forward that activation checkpointing runs again included
    (as GPT-NeoX logs it); train/mfu: the model's FLOPs alone over the GPU's peak (a recomputation is not model
    work, or checkpointing would raise the MFU of a slower run)."""
    per_gpu = step_seconds * gpus * 1e12
    done = flops_per_step(cfg, global_batch, seq_length, activation_checkpointing) / per_gpu
    model = flops_per_step(cfg, global_batch, seq_length, activation_checkpointing=False) / per_gpu
    return {"train/tflops_per_gpu": done, "train/mfu": model / peak_tflops}


def gpu_peak_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)
