"""Generation: greedy and sampling filters, seeds, eos handling."""

from __future__ import annotations

import pytest
import torch

from neox.model.generate import SamplingConfig, filter_logits, generate
from tests.conftest import tiny_model


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = filter_logits(logits, top_k=2, top_p=1.0)
    assert torch.isfinite(kept).tolist() == [[False, True, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = filter_logits(probs.log(), top_k=0, top_p=0.75)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    # the most likely token survives even a tiny top_p
    assert torch.isfinite(filter_logits(probs.log(), top_k=0, top_p=0.01)).tolist() == [[True, False, False, False]]


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    model = tiny_model()
    prompt = torch.tensor([[1, 2, 3]])
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.5, top_k=50, top_p=0.95)
    runs = [generate(model, prompt, cfg, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_eos_stops_generation_and_pads_finished_rows():
    model = tiny_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = generate(model, prompt, SamplingConfig(max_new_tokens=6))
    eos = int(greedy[0, 4])  # the second token row 0 generates becomes "eos"
    out = generate(model, prompt, SamplingConfig(max_new_tokens=6, eos_token_id=eos))
    assert out[0, 4] == eos and torch.all(out[0, 4:] == eos)
    assert torch.equal(out[:, :5], greedy[:, :5])


def test_prompt_longer_than_the_context_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, torch.zeros(1, 60, dtype=torch.long), SamplingConfig(max_new_tokens=10))


def test_sampling_config_is_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)
