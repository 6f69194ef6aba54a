"""Swapping the LayerNorm and rotary kernels (train.layer_norm, train.rotary): every module reached, the parameters
and their names kept, the model's output unchanged when the kernel computes what PyTorch's does. liger-kernel's
own kernels need a GPU; bench/gpu_checks.py checks them against these references there."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from neox.errors import ConfigError
from neox.model.gpt_neox import initialized
from neox.model.rotary import rotate_query_key
from neox.train.kernels import KernelLayerNorm, replace_layer_norms, replace_rotary, use_kernels
from tests.conftest import tiny_config


def reference_layer_norm(x, weight, bias, eps):
    """PyTorch's LayerNorm with liger-kernel's argument order (X, W, B, eps)."""
    return F.layer_norm(x, weight.shape, weight, bias, eps)


def test_replaced_layer_norms_keep_their_parameters_and_names():
    cfg = tiny_config()
    model = initialized(cfg, seed=3)
    before = model.state_dict()
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    expected = model(ids)

    replaced = replace_layer_norms(model, reference_layer_norm)

    assert replaced == 2 * cfg.num_layers + 1  # two per layer and the final one
    assert isinstance(model.final_layer_norm, KernelLayerNorm)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[name] is before[name] or torch.equal(after[name], before[name]) for name in before)
    torch.testing.assert_close(model(ids), expected, rtol=0, atol=0)


def test_the_layer_norm_kernel_is_what_runs():
    model = initialized(tiny_config())
    calls = []

    def counting(x, weight, bias, eps):
        calls.append(eps)
        return reference_layer_norm(x, weight, bias, eps)

    replace_layer_norms(model, counting)
    model(torch.zeros(1, 4, dtype=torch.long))
    assert len(calls) == 2 * model.cfg.num_layers + 1
    assert set(calls) == {model.cfg.layernorm_epsilon}


def test_every_attention_rotates_with_the_kernel_given_cos_sin_as_wide_as_the_rotated_slice():
    """liger-kernel rotates as many leading dims of each head as cos/sin are wide, from their first half: the
    duplicated layout `rotary_cos_sin` makes. Pythia rotates a quarter of each head."""
    cfg = tiny_config()
    model = initialized(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    expected = model(ids)
    seen = []

    def recording(q, k, cos, sin):
        seen.append((q.shape, k.shape, cos, sin))
        return rotate_query_key(q, k, cos, sin)

    assert replace_rotary(model, recording) == cfg.num_layers
    torch.testing.assert_close(model(ids), expected, rtol=0, atol=0)
    assert len(seen) == cfg.num_layers
    q_shape, k_shape, cos, sin = seen[0]
    assert q_shape == k_shape == (2, cfg.num_attention_heads, 8, cfg.head_size)
    half = cfg.rotary_ndims // 2
    assert cos.shape == sin.shape == (8, cfg.rotary_ndims) and cfg.rotary_ndims < cfg.head_size
    assert torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])


def test_torch_kernels_leave_the_model_as_it_is():
    model = initialized(tiny_config())
    use_kernels(model, "torch", "torch")
    assert not any(isinstance(m, KernelLayerNorm) for m in model.modules())
    assert all(layer.attention.rotary is rotate_query_key for layer in model.layers)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed here")
@pytest.mark.parametrize(
    ("layer_norm", "rotary", "setting"), [("liger", "torch", "layer_norm"), ("torch", "liger", "rotary")]
)
def test_liger_kernels_without_liger_kernel_installed_say_how_to_get_it(layer_norm, rotary, setting):
    with pytest.raises(ConfigError, match=f"train.{setting}: liger needs liger-kernel.*use torch on the CPU"):
        use_kernels(initialized(tiny_config()), layer_norm, rotary)


@pytest.mark.parametrize("setting", ["layer_norm", "rotary", "cross_entropy"])
def test_liger_kernels_are_refused_without_gpus(setting):
    from neox.pipeline.configfile import parse
    from neox.train.config import TrainConfig, check_layout

    cfg = parse(TrainConfig, {"model": ("m.yml",), setting: "liger"})
    with pytest.raises(ConfigError, match=f"train.{setting} liger runs on GPUs only"):
        check_layout(cfg, tiny_config())


def test_liger_layer_norm_is_refused_with_compile_on_a_torch_that_drops_its_kernel(monkeypatch):
    # On an H200 with torch 2.11, torch.compile left liger-kernel 0.8.5's LayerNorm outputs unwritten: the loss was NaN
    # from step 1. torch 2.13 analyses the kernel (bench/gpu/liger_compile_analysis.py).
    from neox.pipeline.configfile import parse
    from neox.train import config
    from neox.train.config import TrainConfig, check_layout, compile_drops_liger_layer_norm

    assert compile_drops_liger_layer_norm("2.11.0+cu130") and compile_drops_liger_layer_norm("2.12.1")
    assert not compile_drops_liger_layer_norm("2.13.0+cpu") and not compile_drops_liger_layer_norm("2.14.1")
    settings = {"model": ("m.yml",), "use_gpu": True, "layer_norm": "liger", "compile": True}
    check_layout(parse(TrainConfig, settings), tiny_config())  # the lock's torch

    monkeypatch.setattr(config, "installed_torch", lambda: "2.11.0+cu130")
    with pytest.raises(ConfigError, match="liger does not combine with train.compile on torch 2.11.0.*torch 2.13"):
        check_layout(parse(TrainConfig, settings), tiny_config())
    for allowed in ({"compile": False}, {"layer_norm": "torch"}):
        check_layout(parse(TrainConfig, settings | allowed), tiny_config())
