"""Our checkpoint folder: a fresh model's vocabulary covers its tokenizer, and weights must match their config."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file

from neox.errors import ConfigError, DataError
from neox.model.checkpoint import init_checkpoint, load_model
from neox.pipeline.layout import WEIGHTS_FILE
from tests.conftest import REPO

TINY = REPO / "configs" / "model" / "tiny.yml"


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path, tokenizer_file):
    with pytest.raises(ConfigError, match="smaller than the tokenizer's 257 tokens"):
        init_checkpoint([TINY], tmp_path / "m", vocab_size=10, tokenizer_file=tokenizer_file)
    assert not (tmp_path / "m").exists()
    assert init_checkpoint([TINY], tmp_path / "m", tokenizer_file=tokenizer_file).cfg.vocab_size >= 257


def test_weights_that_do_not_fit_the_config_name_the_file(tmp_path):
    init_checkpoint([TINY], tmp_path / "m", vocab_size=100)
    save_file(
        {"embed_in.weight": load_model(tmp_path / "m").embed_in.weight[:5].contiguous()}, tmp_path / "m" / WEIGHTS_FILE
    )
    with pytest.raises(DataError, match=f"{WEIGHTS_FILE} does not hold the model config.yml describes"):
        load_model(tmp_path / "m")
