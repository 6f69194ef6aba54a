"""The tiktoken engine reproduces `tokenizers` ids for byte-level BPEs, and declines what it cannot reproduce."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from neox.data.fast_bpe import agrees_on, byte_level_alphabet, fast_encoder

TRICKY = [
    "def f(x):\n    return x  # ok\r\n",
    "naïve café — e\u0301 (NFC folds this) 東京 🚀",
    "a literal <|endoftext|> inside text, and <|padding|>",
    "   leading and trailing spaces   ",
    "I'll've 'tis they're 123,456.78 $$$ ---",
    "",
]


def test_byte_level_alphabet_covers_every_byte_once():
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ") and alphabet["A"] == ord("A")


def test_fast_engine_gives_the_ids_of_tokenizers(corpus_tokenizer):
    spec = corpus_tokenizer.read_text()
    encode = fast_encoder(spec)
    assert encode is not None
    reference = Tokenizer.from_str(spec)
    for text in TRICKY:
        assert encode(text).tolist() == reference.encode(text).ids, text
    assert agrees_on(encode, spec, TRICKY)


def test_other_pipelines_are_left_to_tokenizers():
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        ["some words here"] * 10, trainers.BpeTrainer(vocab_size=100, special_tokens=["[UNK]"], show_progress=False)
    )
    assert fast_encoder(tok.to_str()) is None


def test_disagreement_is_detected(corpus_tokenizer):
    spec = corpus_tokenizer.read_text()
    assert not agrees_on(lambda text: [0], spec, ["hello"])
