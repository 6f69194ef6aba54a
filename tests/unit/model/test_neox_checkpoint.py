"""EleutherAI gpt-neox checkpoints in and out. The fixture is built here by hand from a Hugging Face model, following
gpt-neox's `tools/ckpts/convert_neox_to_hf.py` (its file names, its parameter names, which tensors are cut along
which dimension, the layer-index offsets of the embedding, final norm and output layer), not by our exporter: a
round trip alone would pass with a wrong layout."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from neox.errors import ConfigError, DataError
from neox.model.checkpoint import load_model, save_model
from neox.model.gpt_neox import GPTNeoX
from neox.model.neox_checkpoint import export_neox, import_neox
from tests.conftest import NEOX

LAYERS, HIDDEN, HEADS, VOCAB = 2, 64, 4, 256


@pytest.fixture(scope="module")
def pythia_like() -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=128,
        hidden_act="gelu",
        use_parallel_residual=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        tie_word_embeddings=False,
    )
    torch.manual_seed(7)
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a norm or bias read from the wrong place shows
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model


def model_yaml(directory: Path, tp: int) -> Path:
    path = directory / "model.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "num_layers": LAYERS,
                "hidden_size": HIDDEN,
                "num_attention_heads": HEADS,
                "max_position_embeddings": 128,
                "pos_emb": "rotary",
                "rotary_pct": 0.25,
                "no_weight_tying": True,
                "gpt_j_residual": True,
                "make_vocab_size_divisible_by": 128,
                "model_parallel_size": tp,
                "pipe_parallel_size": 1,
            }
        )
    )
    return path


def gpt_neox_layers(hf: GPTNeoXForCausalLM, tp: int) -> dict[int, list[dict[str, torch.Tensor]]]:
    """Each gpt-neox layer index's state dict per tensor-parallel rank, as convert_neox_to_hf.py reads them back:
    it concatenates word_embeddings, query_key_value, dense_h_to_4h and final_linear on dim 0 and attention.dense
    and dense_4h_to_h weights on dim 1, sums the row-parallel biases over ranks and averages the norms."""
    state = hf.state_dict()

    def cut(name: str, dim: int) -> list[torch.Tensor]:
        return [t.clone() for t in torch.chunk(state[name], tp, dim=dim)]

    def same(name: str) -> list[torch.Tensor]:
        return [state[name].clone() for _ in range(tp)]

    def summed(name: str) -> list[torch.Tensor]:
        return [state[name] / tp for _ in range(tp)]

    per_index: dict[int, dict[str, list[torch.Tensor]]] = {
        0: {"word_embeddings.weight": cut("gpt_neox.embed_in.weight", 0)}
    }
    rotary = int(HIDDEN // HEADS * 0.25)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary, 2).float() / rotary))
    for i in range(LAYERS):
        p = f"gpt_neox.layers.{i}."
        per_index[i + 2] = {  # + 2: the embedding, then gpt-neox's weightless _pre_transformer_block
            "input_layernorm.weight": same(p + "input_layernorm.weight"),
            "input_layernorm.bias": same(p + "input_layernorm.bias"),
            "post_attention_layernorm.weight": same(p + "post_attention_layernorm.weight"),
            "post_attention_layernorm.bias": same(p + "post_attention_layernorm.bias"),
            "attention.query_key_value.weight": cut(p + "attention.query_key_value.weight", 0),
            "attention.query_key_value.bias": cut(p + "attention.query_key_value.bias", 0),
            "attention.dense.weight": cut(p + "attention.dense.weight", 1),
            "attention.dense.bias": summed(p + "attention.dense.bias"),
            "mlp.dense_h_to_4h.weight": cut(p + "mlp.dense_h_to_4h.weight", 0),
            "mlp.dense_h_to_4h.bias": cut(p + "mlp.dense_h_to_4h.bias", 0),
            "mlp.dense_4h_to_h.weight": cut(p + "mlp.dense_4h_to_h.weight", 1),
            "mlp.dense_4h_to_h.bias": summed(p + "mlp.dense_4h_to_h.bias"),
            "attention.rotary_emb.inv_freq": [inv_freq.clone() for _ in range(tp)],  # a buffer real files carry
        }
    per_index[LAYERS + 3] = {  # L + 2 is the weightless _post_transformer_block
        "norm.weight": same("gpt_neox.final_layer_norm.weight"),
        "norm.bias": same("gpt_neox.final_layer_norm.bias"),
    }
    per_index[LAYERS + 4] = {"final_linear.weight": cut("lm_head.weight", 0)}  # transformers 5 names embed_out so
    return {index: [{k: v[r] for k, v in tensors.items()} for r in range(tp)] for index, tensors in per_index.items()}


def deepspeed_extras() -> dict:
    """What gpt-neox's checkpoint dicts carry besides weights: the step, the RNG states, plain settings."""
    return {
        "iteration": 10,
        "np_rng_state": np.random.get_state(),
        "random_rng_state": (3, tuple(range(5)), None),
        "torch_rng_state": torch.get_rng_state(),
        "args": {"num_layers": LAYERS, "hidden_size": HIDDEN},
    }


def write_gpt_neox_checkpoint(hf: GPTNeoXForCausalLM, directory: Path, tp: int, layout: str) -> Path:
    directory.mkdir(parents=True)
    layers = gpt_neox_layers(hf, tp)
    for rank in range(tp):
        if layout == "layers":  # pipe_parallel_size >= 1: a file per layer and rank, and DeepSpeed's own file
            for index, states in layers.items():
                torch.save(states[rank], directory / f"layer_{index:02d}-model_{rank:02d}-model_states.pt")
            torch.save({"module": None, **deepspeed_extras()}, directory / f"mp_rank_{rank:02d}_model_states.pt")
        else:  # pipe_parallel_size 0: one file per rank, the model under `module` as sequential.<index>.<name>
            module = {f"sequential.{i}.{k}": v for i, states in layers.items() for k, v in states[rank].items()}
            torch.save({"module": module, **deepspeed_extras()}, directory / f"mp_rank_{rank:02d}_model_states.pt")
    return directory


@pytest.mark.parametrize("layout", ["layers", "whole"])
@pytest.mark.parametrize("tp", [1, 2])
def test_a_gpt_neox_checkpoint_imports_to_the_model_it_came_from(tmp_path, pythia_like, layout, tp):
    source = write_gpt_neox_checkpoint(pythia_like, tmp_path / "global_step10", tp, layout)
    import_neox(source, model_yaml(tmp_path, tp), tmp_path / "ours")

    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        theirs, ours = pythia_like(ids).logits, load_model(tmp_path / "ours")(ids)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tp", [1, 2])
def test_export_writes_the_layout_gpt_neox_writes_and_imports_back_bit_for_bit(tmp_path, pythia_like, tp):
    import_neox(
        write_gpt_neox_checkpoint(pythia_like, tmp_path / "given", tp, "layers"),
        model_yaml(tmp_path, tp),
        tmp_path / "ours",
    )
    export_neox(tmp_path / "ours", tmp_path / "exported", partitions=tp)

    expected = gpt_neox_layers(pythia_like, tp)
    written = sorted(p.name for p in (tmp_path / "exported").glob("layer_*.pt"))
    assert written == sorted(f"layer_{i:02d}-model_{r:02d}-model_states.pt" for i in expected for r in range(tp))
    for index, states in expected.items():
        for rank, state in enumerate(states):
            got = torch.load(
                tmp_path / "exported" / f"layer_{index:02d}-model_{rank:02d}-model_states.pt", weights_only=True
            )
            state = {k: v for k, v in state.items() if k != "attention.rotary_emb.inv_freq"}
            assert got.keys() == state.keys(), index
            for key in state:
                torch.testing.assert_close(
                    got[key], state[key], rtol=0, atol=1e-6, msg=f"layer {index} rank {rank} {key}"
                )
    config = yaml.safe_load((tmp_path / "exported" / "config.yml").read_text())
    assert (config["model_parallel_size"], config["pipe_parallel_size"], config["num_layers"]) == (tp, 1, LAYERS)

    import_neox(tmp_path / "exported", tmp_path / "exported" / "config.yml", tmp_path / "again")
    first, again = load_model(tmp_path / "ours").state_dict(), load_model(tmp_path / "again").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_a_file_carrying_code_is_refused_and_nothing_is_written(tmp_path, pythia_like):
    source = write_gpt_neox_checkpoint(pythia_like, tmp_path / "global_step10", 1, "whole")
    state = torch.load(source / "mp_rank_00_model_states.pt", weights_only=False)
    state["payload"] = Payload()
    torch.save(state, source / "mp_rank_00_model_states.pt")
    with pytest.raises(DataError, match="not a gpt-neox checkpoint file neox reads safely"):
        import_neox(source, model_yaml(tmp_path, 1), tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_export_refuses_a_tied_model_and_a_split_that_does_not_divide(tmp_path, pythia_like):
    import_neox(
        write_gpt_neox_checkpoint(pythia_like, tmp_path / "given", 1, "layers"),
        model_yaml(tmp_path, 1),
        tmp_path / "ours",
    )
    with pytest.raises(ConfigError, match="does not divide num_attention_heads"):
        export_neox(tmp_path / "ours", tmp_path / "out", partitions=3)
    untied = load_model(tmp_path / "ours").cfg
    save_model(GPTNeoX(dataclasses.replace(untied, no_weight_tying=False)), tmp_path / "tied")
    with pytest.raises(ConfigError, match="ties its output layer"):
        export_neox(tmp_path / "tied", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_converts_both_ways(tmp_path, pythia_like):
    source = write_gpt_neox_checkpoint(pythia_like, tmp_path / "global_step10", 2, "layers")
    imported = subprocess.run(
        [NEOX, "import-neox", str(source), str(tmp_path / "ours"), "--config", str(model_yaml(tmp_path, 2))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    exported = subprocess.run(
        [NEOX, "export-neox", str(tmp_path / "ours"), str(tmp_path / "back"), "--model-parallel-size", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0 and f"wrote {tmp_path / 'back'}" in exported.stdout, exported.stderr
    assert (tmp_path / "back" / f"layer_{LAYERS + 4:02d}-model_01-model_states.pt").is_file()  # the output layer
