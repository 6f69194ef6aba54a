"""The chunked linear + cross-entropy equals the loss from full logits, in value and in both gradients."""

import importlib.util

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from neox.errors import ConfigError
from neox.train.cross_entropy import chunked_linear_cross_entropy, linear_cross_entropy
from neox.train.pipeline import next_token_loss


def reference(hidden, weight, labels):
    """Loss and gradients through the full logits, as training computes them without a kernel."""
    hidden, weight = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = next_token_loss(hidden @ weight.T, labels, None)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def inputs(tokens=37, width=16, vocab=50, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, width, generator=generator).to(dtype)
    weight = (torch.randn(vocab, width, generator=generator) / 4).to(dtype)
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    return hidden, weight, labels


@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])  # one token, uneven chunks, exactly all, more than all
def test_chunked_loss_and_gradients_equal_the_full_logits_in_fp32(chunk):
    hidden, weight, labels = inputs()
    labels[:5] = -100  # a masked prompt
    expected, grad_hidden, grad_weight = reference(hidden, weight, labels)
    hidden.requires_grad_(), weight.requires_grad_()
    loss = chunked_linear_cross_entropy(hidden, weight, labels, chunk)
    (loss * 3.0).backward()  # the incoming gradient scales both
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad, 3.0 * grad_hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, 3.0 * grad_weight, rtol=1e-5, atol=1e-6)
    assert (hidden.grad[:5] == 0).all()  # masked tokens pass no gradient back


def test_in_bf16_it_stays_within_a_percent_of_the_fp32_loss_and_gradients():
    hidden, weight, labels = inputs(tokens=64, width=32, vocab=300)
    expected, grad_hidden, grad_weight = reference(hidden, weight, labels)
    low_hidden, low_weight = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    loss = linear_cross_entropy(low_hidden.view(4, 16, 32), low_weight, labels.view(4, 16), "chunked", chunk=24)
    loss.backward()
    assert low_hidden.grad.dtype == low_weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=0)
    for got, want in ((low_hidden.grad, grad_hidden), (low_weight.grad, grad_weight)):
        assert (got.float() - want).norm() / want.norm() < 1e-2


def test_nothing_scored_is_a_zero_loss_with_zero_gradients():
    hidden, weight, labels = inputs()
    hidden.requires_grad_(), weight.requires_grad_()
    loss = chunked_linear_cross_entropy(hidden, weight, torch.full_like(labels, -100), 8)
    loss.backward()
    assert loss.item() == 0.0 and not hidden.grad.any() and not weight.grad.any()


def matmul_flops(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def test_only_the_gradients_asked_for_are_computed():
    hidden, weight, labels = inputs()
    logits_only = 2 * hidden.shape[0] * hidden.shape[1] * weight.shape[0]  # one tokens x width x vocab matmul
    expected, grad_hidden, _ = reference(hidden, weight, labels)

    with torch.no_grad():  # evaluation: the loss alone
        assert matmul_flops(lambda: chunked_linear_cross_entropy(hidden, weight, labels, 8)) == logits_only
        torch.testing.assert_close(chunked_linear_cross_entropy(hidden, weight, labels, 8), expected)

    hidden.requires_grad_()  # a frozen output layer (LoRA): the hidden states' gradient, not the weight's
    loss = chunked_linear_cross_entropy(hidden, weight, labels, 8)
    assert matmul_flops(lambda: chunked_linear_cross_entropy(hidden, weight, labels, 8)) == 2 * logits_only
    loss.backward()
    assert weight.grad is None
    torch.testing.assert_close(hidden.grad, grad_hidden, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed here")
def test_liger_without_liger_kernel_installed_says_how_to_get_it():
    hidden, weight, labels = inputs()
    with pytest.raises(ConfigError, match="liger needs liger-kernel"):
        linear_cross_entropy(hidden, weight, labels, "liger")


@pytest.mark.parametrize("layout", [{"model_parallel_size": 2}, {"pipe_parallel_size": 2}, {"zero_stage": 3}])
def test_the_fused_loss_is_refused_with_model_parallelism_and_zero_3(layout):
    from neox.pipeline.configfile import parse
    from neox.train.config import TrainConfig, check_layout
    from tests.conftest import tiny_config

    cfg = parse(TrainConfig, {"model": ("m.yml",), "num_workers": 2, "cross_entropy": "chunked", **layout})
    with pytest.raises(ConfigError, match="train.cross_entropy chunked needs"):
        check_layout(cfg, tiny_config())
