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


@pytest.mark.parametrize("damage", ["cut short", "a folder"])
def test_damaged_weights_are_one_error_naming_the_file_in_every_reader_and_nothing_is_written(tmp_path, damage):
    from neox.model.hf import export_hf
    from neox.model.neox_checkpoint import export_neox

    checkpoint = tmp_path / "m"
    init_checkpoint([REPO / "configs" / "model" / "pythia-14m.yml"], checkpoint, vocab_size=100)
    weights = checkpoint / WEIGHTS_FILE
    if damage == "cut short":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.unlink()
        weights.mkdir()
    message = f"{weights} cannot be read" if damage == "cut short" else f"{weights} is a folder, not a weights file"
    for read in (load_model, lambda c: export_hf(c, tmp_path / "hf"), lambda c: export_neox(c, tmp_path / "neox")):
        with pytest.raises(DataError, match=message):
            read(checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
