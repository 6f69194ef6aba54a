"""Hugging Face interop: exported models load in transformers with equal logits and equal greedy output,
and import -> export round-trips bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

from neox.errors import ConfigError
from neox.model.checkpoint import load_model, save_model
from neox.model.generate import SamplingConfig, generate
from neox.model.hf import export_hf, from_hf_state_dict, import_hf, load_hf_model
from tests.conftest import tiny_model


def export_tiny(tmp_path, tokenizer_file=None, dtype=torch.float32, **overrides):
    model = tiny_model(**overrides)
    save_model(model, tmp_path / "ckpt", tokenizer_file=tokenizer_file)
    export_hf(tmp_path / "ckpt", tmp_path / "hf", dtype=dtype)
    hf_model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    return model, hf_model.eval()


@pytest.mark.parametrize("parallel_residual", [True, False], ids=["parallel", "sequential"])
@pytest.mark.parametrize("tanh_gelu", [True, False], ids=["tanh-gelu", "exact-gelu"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_transformers_computes_our_logits(tmp_path, parallel_residual, tanh_gelu, tied):
    ours, theirs = export_tiny(
        tmp_path, gpt_j_residual=parallel_residual, bias_gelu_fusion=tanh_gelu, no_weight_tying=not tied
    )
    expected_act = "gelu_pytorch_tanh" if tanh_gelu else "gelu"
    assert theirs.config.hidden_act == expected_act
    assert theirs.config.use_parallel_residual is parallel_residual
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rotary_pct", [0.25, 1.0], ids=["quarter-rotary", "full-rotary"])
def test_transformers_computes_our_gradients(tmp_path, rotary_pct):
    """Every parameter's gradient of one loss, through both models: our attention splits and rotates queries and
    keys in its own order of views (for fewer copies in the backward), which must not change a gradient."""
    ours, theirs = export_tiny(tmp_path, rotary_pct=rotary_pct)
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(4))
    torch.nn.functional.cross_entropy(ours(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    theirs(ids, labels=ids).loss.backward()
    their_grads = from_hf_state_dict(
        {name: p.grad for name, p in theirs.named_parameters()}, tied=ours.embed_out is None
    )  # in our names, as an import renames them
    assert their_grads.keys() == dict(ours.named_parameters()).keys()
    for name, param in ours.named_parameters():
        torch.testing.assert_close(their_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_gelu_variant_matters(tmp_path):
    """Guards the check above: exporting a tanh-GELU model as exact GELU (GPT-NeoX's own exporter's mistake)
    changes the logits by more than the tolerance."""
    ours, theirs = export_tiny(tmp_path, bias_gelu_fusion=True)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["hidden_act"] = "gelu"
    wrong = GPTNeoXForCausalLM(GPTNeoXConfig(**config)).eval()
    wrong.load_state_dict(theirs.state_dict())
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (wrong(ids).logits - ours(ids)).abs().max() > 1e-5


def test_greedy_generation_matches_transformers_token_for_token(tmp_path):
    ours, theirs = export_tiny(tmp_path)
    prompts = torch.randint(1, 256, (4, 7), generator=torch.Generator().manual_seed(3))
    for prompt in prompts:
        expected = theirs.generate(prompt[None], max_new_tokens=40, do_sample=False, pad_token_id=0)
        got = generate(ours, prompt[None], SamplingConfig(max_new_tokens=40))
        assert got.tolist() == expected.tolist()


def test_export_writes_dtype_and_tokenizer(tmp_path, tokenizer_file):
    _, theirs = export_tiny(tmp_path, tokenizer_file=tokenizer_file, dtype=torch.bfloat16)
    assert theirs.config.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "hf" / "model.safetensors").values())
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == "<|endoftext|>" and theirs.config.eos_token_id == tok.eos_token_id
    text = "Once upon a time"
    assert tok.decode(tok(text)["input_ids"]) == text


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_import_then_export_round_trips_bit_exactly(tmp_path, tied):
    config = GPTNeoXConfig(
        vocab_size=384,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=200,
        max_position_embeddings=128,
        hidden_act="gelu_pytorch_tanh",
        use_parallel_residual=False,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0, "partial_rotary_factor": 0.5},
        tie_word_embeddings=tied,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(4)
    original = GPTNeoXForCausalLM(config).eval()
    original.save_pretrained(tmp_path / "original")

    import_hf(tmp_path / "original", tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "again", dtype=torch.float32)

    before = load_file(tmp_path / "original" / "model.safetensors")
    after = load_file(tmp_path / "again" / "model.safetensors")
    before = {k.replace("lm_head.", "embed_out."): v for k, v in before.items()}
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    ids = torch.randint(0, 384, (2, 50))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, original(ids).logits)
        torch.testing.assert_close(load_model(tmp_path / "ours")(ids), original(ids).logits, rtol=0, atol=1e-5)


def test_import_keeps_the_weights_dtype(tmp_path):
    config = GPTNeoXConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    GPTNeoXForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = load_hf_model(tmp_path / "bf16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_import_rejects_what_is_not_gpt_neox(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="not a GPT-NeoX model"):
        import_hf(tmp_path / "llama", tmp_path / "out")
    with pytest.raises(ConfigError, match="config.json is missing"):
        import_hf(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "odd").mkdir()  # a GPT-NeoX config whose heads do not divide the hidden size
    odd = {"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 100, "num_attention_heads": 3}
    (tmp_path / "odd" / "config.json").write_text(json.dumps({**odd, "vocab_size": 256}))
    with pytest.raises(ConfigError, match="config.json: hidden_size \\(100\\) must be divisible"):
        import_hf(tmp_path / "odd", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_conversion_never_writes_over_its_own_input(tmp_path):
    save_model(tiny_model(), tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    before = {p.name: p.read_bytes() for folder in ("ckpt", "hf") for p in (tmp_path / folder).iterdir()}
    with pytest.raises(ConfigError, match="is the model being converted"):
        export_hf(tmp_path / "ckpt", tmp_path / "ckpt", overwrite=True)
    with pytest.raises(ConfigError, match="is the model being converted"):
        import_hf(tmp_path / "hf", tmp_path / "hf", overwrite=True)
    assert before == {p.name: p.read_bytes() for folder in ("ckpt", "hf") for p in (tmp_path / folder).iterdir()}
