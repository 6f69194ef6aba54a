"""Tokenizer training and loading."""

from __future__ import annotations

import pytest

from neox.data.tokenizer import eod_id, load_tokenizer, train_bpe
from neox.pipeline.layout import TOKENIZER_FILE


def test_trained_bpe_is_byte_level_with_gpt_neox_special_tokens(corpus_tokenizer):
    tok = load_tokenizer(corpus_tokenizer)
    assert tok.get_vocab_size() == 2048
    assert tok.token_to_id("<|endoftext|>") == 0 == eod_id(tok) and tok.token_to_id("<|padding|>") == 1
    for text in ["def f(x):\n    return x  # ok", "naïve café — 東京 🚀", "  leading spaces\ttabs"]:
        assert tok.decode(tok.encode(text).ids) == text  # byte-level: any text round-trips
    assert len(tok.encode("def __init__(self):").ids) < len("def __init__(self):") / 2  # it learned merges


def test_bad_tokenizer_inputs_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a Hugging Face tokenizers JSON"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_bpe(["x"], vocab_size=10)


def test_tokenizer_stage_trains_once_and_adopts_existing_files(tmp_path, small_corpus, corpus_tokenizer):
    from neox.data.tokenizer import tokenizer_stage
    from neox.pipeline.stage import sha256_file, verify_output

    trained = tokenizer_stage(tmp_path, vocab_size=1024, input_dir=small_corpus).path
    assert load_tokenizer(trained / TOKENIZER_FILE).get_vocab_size() == 1024
    assert verify_output(trained)["stats"]["sha256"] == sha256_file(trained / TOKENIZER_FILE)
    assert tokenizer_stage(tmp_path, vocab_size=1024, input_dir=small_corpus).reused
    adopted = tokenizer_stage(tmp_path, vocab_size=0, source=f"file://{corpus_tokenizer}").path
    assert (adopted / TOKENIZER_FILE).read_bytes() == corpus_tokenizer.read_bytes()
    with pytest.raises(ValueError, match="either input shards"):
        tokenizer_stage(tmp_path, vocab_size=1024)
