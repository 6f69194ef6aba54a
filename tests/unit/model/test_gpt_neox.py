"""The GPT-NeoX architecture: causality, KV cache, rotary, init methods, parameter counts, the copies its backward
leaves out."""

from __future__ import annotations

import math

import pytest
import torch

from neox.model.config import load_model_config
from neox.model.gpt_neox import KVCache, count_parameters, init_parameter, init_std, initialized
from neox.model.rotary import apply_rotary, rotary_cos_sin
from tests.conftest import REPO, tiny_config, tiny_model


def test_logits_shape_and_causality():
    model = tiny_model()
    ids = torch.randint(0, 256, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 16, 256)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)  # the past never sees the future
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_the_backward_copies_neither_the_projections_gradient_nor_whole_heads():
    """Memory traffic on a GPU: the query/key/value gradients are joined straight into the fused projection's layout
    (no copy of the joined gradient), and the rotary's backward joins the rotated and passed-through slices (no
    zero-filled tensor per slice). What remains copied is the CPU attention's output (flash and cuDNN attention on a GPU
    write it in the layout the output projection reads)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = tiny_config()
    model = tiny_model().train()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))  # 12 positions: no size of another dim
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(ids).sum().backward()
    heads, head = cfg.num_attention_heads, cfg.head_size
    events = [(event.name, tuple(event.input_shapes[0])) for event in prof.events() if event.input_shapes]
    copied = [shape for name, shape in events if name in ("aten::copy_", "aten::slice_backward")]
    assert (2, 12, heads, 3 * head) not in copied  # the joined q/k/v gradient
    assert not any(
        len(shape) == 4 and shape[-1] in (head, cfg.rotary_ndims, head - cfg.rotary_ndims) and shape[1] == heads
        for shape in copied
    )  # a (batch, heads, seq, dims) slice of q or k
    # what the profiler does see: the CPU attention's output, copied once per layer
    assert [name for name, shape in events if shape == (2, 12, heads, head)].count("aten::clone") == cfg.num_layers


@pytest.mark.parametrize("parallel_residual", [True, False])
def test_kv_cache_gives_the_logits_of_a_full_forward(parallel_residual):
    model = tiny_model(gpt_j_residual=parallel_residual)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.cfg, batch_size=2, max_length=20, dtype=torch.float32, device=torch.device("cpu"))
        pieces = [model(ids[:, :8], cache), model(ids[:, 8:13], cache)]  # a prompt, then a multi-token chunk
        pieces += [model(ids[:, t : t + 1], cache) for t in range(13, 20)]  # then one token at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20


def test_kv_cache_refuses_to_overflow():
    model = tiny_model()
    cache = KVCache(model.cfg, batch_size=1, max_length=4, dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


def test_rotary_rotates_only_the_first_rotary_dims():
    cos, sin = rotary_cos_sin(rotary_ndims=4, base=10000, start=3, length=5, device=torch.device("cpu"))
    x = torch.randn(1, 2, 5, 16)
    out = apply_rotary(x, cos, sin)
    torch.testing.assert_close(out[..., 4:], x[..., 4:], rtol=0, atol=0)
    assert not torch.allclose(out[..., :4], x[..., :4])
    torch.testing.assert_close(out[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1))  # a rotation keeps lengths
    # "rotate half": dims i and i + ndims/2 form a pair rotated by angle position * base^(-2i/ndims)
    angle = 3 * 10000 ** (-2 * 1 / 4)
    pair = x[0, 0, 0, [1, 3]]
    expected = torch.tensor(
        [pair[0] * math.cos(angle) - pair[1] * math.sin(angle), pair[1] * math.cos(angle) + pair[0] * math.sin(angle)]
    )
    torch.testing.assert_close(out[0, 0, 0, [1, 3]], expected)


def test_init_methods_have_gpt_neox_standard_deviations():
    cfg = tiny_config(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=512)
    assert init_std("small_init", cfg) == pytest.approx(math.sqrt(2 / (5 * 256)))
    assert init_std("wang_init", cfg) == pytest.approx(2 / (4 * 16))
    assert init_std("normal", cfg) == 0.02
    assert init_std("scaled_normal", cfg) == pytest.approx(0.02 / math.sqrt(8))
    model = initialized(cfg, 0)
    layer = model.layers[0]
    assert layer.attention.query_key_value.weight.std().item() == pytest.approx(init_std("small_init", cfg), rel=0.05)
    assert layer.attention.dense.weight.std().item() == pytest.approx(init_std("wang_init", cfg), rel=0.05)
    assert layer.mlp.dense_4h_to_h.weight.std().item() == pytest.approx(init_std("wang_init", cfg), rel=0.05)
    assert model.embed_out.weight.std().item() == pytest.approx(init_std("small_init", cfg), rel=0.05)
    assert torch.all(layer.attention.query_key_value.bias == 0)
    assert torch.all(layer.input_layernorm.weight == 1) and torch.all(model.final_layer_norm.bias == 0)


def test_tied_model_uses_the_input_embedding_as_output_layer():
    model = tiny_model(no_weight_tying=False)
    assert model.embed_out is None and "embed_out.weight" not in model.state_dict()
    model(torch.tensor([[5, 6]]))[0, -1, 200].backward()
    # row 200 is never looked up as an input, so its gradient comes from the output layer alone
    assert model.embed_in.weight.grad[200].abs().sum() > 0
    assert count_parameters(model.cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, count",
    [
        ("pythia-70m", 70_426_624),
        ("pythia-160m", 162_322_944),
        ("pythia-410m", 405_334_016),
        ("pythia-1b", 1_011_781_632),
        ("pythia-1.4b", 1_414_647_808),
        ("pythia-2.8b", 2_775_208_960),
        ("pythia-6.9b", 6_857_302_016),
        ("pythia-12b", 11_846_072_320),
        ("neox-20b", 20_554_567_680),
    ],
)
def test_parameter_counts_match_the_published_models(name, count):
    # 20B in fp32 would need 82 GB: counting it at all shows the model is built on the meta device.
    cfg, _ = load_model_config(REPO / "configs" / "model" / f"{name}.yml", vocab_size=50277)
    assert count_parameters(cfg) == count


def test_each_parameter_draws_from_its_own_generator_seeded_by_the_seed_and_its_name():
    """So a rank holding a slice of a parameter, or a pipeline stage holding some layers, starts from the values the
    whole model has for the same seed."""
    cfg = tiny_config()
    model = initialized(cfg, seed=3)
    params = dict(model.named_parameters())
    name = "layers.1.mlp.dense_h_to_4h.weight"
    alone = init_parameter(cfg, name, tuple(params[name].shape), seed=3)
    torch.testing.assert_close(params[name], alone, rtol=0, atol=0)
    assert not torch.equal(params[name], params["layers.0.mlp.dense_h_to_4h.weight"])
    assert not torch.equal(params[name], dict(initialized(cfg, seed=4).named_parameters())[name])
    deeper = dict(initialized(tiny_config(num_layers=3), seed=3).named_parameters())
    torch.testing.assert_close(deeper["embed_in.weight"], params["embed_in.weight"], rtol=0, atol=0)
