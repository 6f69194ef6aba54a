"""MFU counts the model's FLOPs only: the forward that activation checkpointing runs again is hardware work."""

from pathlib import Path

import pytest

from neox.model.config import load_model_config
from neox.train.flops import flops_per_step, per_gpu_rates

PYTHIA_410M = Path(__file__).resolve().parents[3] / "configs" / "model" / "pythia-410m.yml"


def test_gpt_neox_formula_for_pythia_410m():
    cfg, _ = load_model_config(PYTHIA_410M, vocab_size=50277)  # padded to 50304, as GPT-NeoX counts it
    tokens, layers, h, vocab = 16 * 2048, 24, 1024, 50304
    expected = 72 * tokens * layers * h**2 * (1 + 2048 / (6 * h) + vocab / (16 * layers * h))
    assert flops_per_step(cfg, 16, 2048, activation_checkpointing=False) == pytest.approx(expected)
    assert flops_per_step(cfg, 16, 2048, activation_checkpointing=True) == pytest.approx(expected * 4 / 3)


def test_checkpointing_raises_the_tflops_computed_but_not_the_mfu():
    cfg, _ = load_model_config(PYTHIA_410M, vocab_size=50277)
    plain = per_gpu_rates(cfg, 32, 2048, False, step_seconds=0.5, gpus=2, peak_tflops=989.0)
    recomputed = per_gpu_rates(cfg, 32, 2048, True, step_seconds=0.5, gpus=2, peak_tflops=989.0)
    assert plain["train/mfu"] == recomputed["train/mfu"]
    assert plain["train/mfu"] == pytest.approx(flops_per_step(cfg, 32, 2048, False) / 0.5 / 2 / 989e12)
    assert recomputed["train/tflops_per_gpu"] == pytest.approx(plain["train/tflops_per_gpu"] * 4 / 3)
