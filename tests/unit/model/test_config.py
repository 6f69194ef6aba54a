"""Reading GPT-NeoX YAML configs as EleutherAI ships them, and validating them at the edge."""

from __future__ import annotations

import pytest

from neox.errors import ConfigError
from neox.model.config import ModelConfig, load_model_config, load_neox_yaml, pad_vocab_size
from neox.pipeline.configfile import parse

# The shape of EleutherAI/gpt-neox's configs/pythia/160M.yml: JSON-like YAML with comments, hyphenated and
# underscored keys, Python-style booleans, trailing commas and nested DeepSpeed sections.
PYTHIA_STYLE = """
# GPT-2 pretraining setup
{
   # parallelism settings
   "pipe-parallel-size": 1,
   "model-parallel-size": 1,

   # model settings
   "num-layers": 12,
   "hidden_size": 768,
   "num-attention-heads": 12,
   "seq-length": 2048,
   "max-position-embeddings": 2048,
   "pos-emb": "rotary",
   "rotary-pct": 0.25,
   "no-weight-tying": True,
   "gpt-j-residual": true,
   "output-layer-parallelism": "column",
   "attention-config": [[["flash"], 12]],
   "bias-gelu-fusion": True,
   "init_method": "small_init",
   "output_layer_init_method": "wang_init",

   "optimizer": {
     "type": "Adam",
     "params": {"lr": 6e-4, "betas": [0.9, 0.95], "eps": 1.0e-8,},
   },
   "min_lr": 0.00006,
   "zero_optimization": {"stage": 1, "allgather_bucket_size": 500000000,},
   "train_micro_batch_size_per_gpu": 32,
}
"""


def write(tmp_path, text, name="model.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_eleutherai_style_yaml(tmp_path):
    cfg, rest = load_model_config(write(tmp_path, PYTHIA_STYLE), vocab_size=50277)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads) == (12, 768, 12)
    assert cfg.no_weight_tying and cfg.gpt_j_residual and cfg.bias_gelu_fusion
    assert cfg.gelu_approximate == "tanh"
    assert cfg.rotary_ndims == 16  # 25% of the 64-dim heads
    assert cfg.vocab_size == 50304
    # keys the model does not read are handed back for the stages that own them
    assert rest["optimizer"]["params"]["lr"] == pytest.approx(6e-4)  # "6e-4" is a float, not YAML 1.1's string
    assert rest["train_micro_batch_size_per_gpu"] == 32
    assert rest["seq_length"] == 2048


def test_a_key_gpt_neox_does_not_define_is_refused_with_the_key_meant(tmp_path):
    text = PYTHIA_STYLE.replace('"min_lr"', '"hiden_size": 3,\n   "min_lr"')
    with pytest.raises(ConfigError, match=r"hiden_size: not a GPT-NeoX key \(did you mean hidden_size\?\)"):
        load_model_config(write(tmp_path, text), vocab_size=50277)
    # a gpt-neox key this model does not read is kept for the stages that own it
    known = PYTHIA_STYLE.replace('"min_lr"', '"log_grad_norm": true,\n   "min_lr"')
    _, rest = load_model_config(write(tmp_path, known), vocab_size=50277)
    assert rest["log_grad_norm"] is True


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"num_layers: input should be a valid integer, got '12'"):
        load_model_config(
            write(tmp_path, PYTHIA_STYLE.replace('"num-layers": 12', '"num-layers": "12"')), vocab_size=100
        )
    with pytest.raises(ConfigError, match=r"gpt_j_residual: input should be a valid boolean, got 1"):
        load_model_config(
            write(tmp_path, PYTHIA_STYLE.replace('"gpt-j-residual": true', '"gpt-j-residual": 1')), vocab_size=100
        )


def test_later_files_override_earlier(tmp_path):
    base = write(tmp_path, PYTHIA_STYLE)
    override = write(tmp_path, '{"num-layers": 2, "hidden-size": 64, "num-attention-heads": 4}', "small.yml")
    cfg, _ = load_model_config(base, override, vocab_size=300)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 64, 4)


def test_same_key_spelled_twice_with_different_values_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="given twice"):
        load_neox_yaml(write(tmp_path, '{"num-layers": 2, "num_layers": 3}'))


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('"pos-emb": "rotary"', '"pos-emb": "learned"', "pos_emb='learned' is not supported"),
        ('"attention-config": [[["flash"], 12]]', '"attention-config": [[["local"], 12]]', "only dense attention"),
        ('"num-layers": 12', '"num-layers": 12, "num_kv_heads": 4', "grouped-query attention"),
    ],
)
def test_architectures_we_do_not_implement_are_refused(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_model_config(write(tmp_path, PYTHIA_STYLE.replace(old, new)), vocab_size=100)


def test_invalid_yaml_and_missing_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="bad.yml is not valid GPT-NeoX YAML"):
        load_neox_yaml(write(tmp_path, "{ num_layers: [", "bad.yml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_neox_yaml(tmp_path / "absent.yml")


def test_a_key_given_twice_with_different_values_is_refused_where_yaml_would_keep_the_last(tmp_path):
    with pytest.raises(ConfigError, match="line 3, column 1: 'num_layers' is given twice \\(first on line 1\\)"):
        load_neox_yaml(write(tmp_path, "num_layers: 12\nhidden_size: 768\nnum_layers: 24\n"))
    assert load_neox_yaml(write(tmp_path, "num_layers: 12\nnum_layers: 12\n"))["num_layers"] == 12
    merged = "base: &b {num_layers: 12, hidden_size: 768}\nmodel:\n  <<: *b\n  num_layers: 24\n"  # YAML merge keys
    assert load_neox_yaml(write(tmp_path, merged))["model"] == {"num_layers": 24, "hidden_size": 768}


def test_missing_vocab_size_says_how_to_give_it(tmp_path):
    with pytest.raises(ConfigError, match="--vocab-size"):
        load_model_config(write(tmp_path, PYTHIA_STYLE))


@pytest.mark.parametrize(
    "vocab, divisible_by, model_parallel, padded",
    [(50277, 128, 1, 50304), (50277, 128, 2, 50432), (50277, 128, 4, 50688), (50304, 128, 1, 50304), (1, 128, 1, 128)],
)
def test_vocab_is_padded_like_gpt_neox(vocab, divisible_by, model_parallel, padded):
    assert pad_vocab_size(vocab, divisible_by, model_parallel) == padded


@pytest.mark.parametrize(
    "values, message",
    [
        ({"hidden_size": 10, "num_attention_heads": 3}, "divisible by num_attention_heads"),
        ({"rotary_pct": 1.5}, "rotary_pct: input should be less than or equal to 1"),
        ({"init_method": "xavier"}, "init_method: input should be 'normal', 'scaled_normal'"),
        ({"hidden_dropout": 1.0}, "hidden_dropout: input should be less than 1"),
    ],
)
def test_model_config_validates_its_values(values, message):
    with pytest.raises(ConfigError, match=message):
        parse(ModelConfig, {"num_layers": 1, "hidden_size": 8, "num_attention_heads": 1, "vocab_size": 8, **values})


def test_to_neox_round_trips(tmp_path):
    cfg, _ = load_model_config(write(tmp_path, PYTHIA_STYLE), vocab_size=50277)
    again, _ = ModelConfig.from_neox(cfg.to_neox())
    assert again == cfg
