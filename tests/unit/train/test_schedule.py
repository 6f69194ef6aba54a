"""GPT-NeoX's learning-rate schedule and the data-parallel batch layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neox.train.config import TrainConfig
from neox.train.loop import sample_indices
from neox.train.schedule import lr_at


def test_linear_warmup_then_cosine_to_min_lr():
    assert lr_at(0, 1.0, 0.1, warmup_iters=10, decay_iters=110) == 0.0
    assert lr_at(5, 1.0, 0.1, warmup_iters=10, decay_iters=110) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 0.1, warmup_iters=10, decay_iters=110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 0.1, warmup_iters=10, decay_iters=110) == pytest.approx(
        0.1 + 0.9 / 2 * (math.cos(math.pi / 2) + 1)
    )
    assert lr_at(110, 1.0, 0.1, warmup_iters=10, decay_iters=110) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 0.1, warmup_iters=10, decay_iters=110) == pytest.approx(0.1)  # stays at min_lr


def test_unknown_decay_style_is_refused():
    with pytest.raises(ValueError, match="lr_decay_style"):
        lr_at(50, 1.0, 0.1, 0, 100, style="exponentialish")


def test_ranks_read_disjoint_contiguous_slices_of_each_global_batch():
    cfg = TrainConfig(model=("m.yml",), micro_batch_size=2, gradient_accumulation_steps=3, num_workers=4)
    assert cfg.global_batch_size == 24
    for step in (0, 7):
        seen = np.concatenate([sample_indices(step, m, r, cfg) for r in range(4) for m in range(3)])
        np.testing.assert_array_equal(seen, np.arange(step * 24, step * 24 + 24))
