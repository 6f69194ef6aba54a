"""The tokenizer stage's library side: train a byte-level BPE like GPT-NeoX-20B's, or load an existing
`tokenizer.json` (e.g. EleutherAI's `20B_tokenizer.json`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS = [EOD_TOKEN, PAD_TOKEN]  # ids 0 and 1, as in the 20B tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
    """A byte-level BPE with the 20B tokenizer's pipeline: NFC normalisation, ByteLevel pre-tokenizer (GPT-2
    split pattern, no prefix space), ByteLevel decoder and post-processor, special tokens <|endoftext|> and
    <|padding|> first."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (the byte alphabet + specials)")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        raise ValueError(f"{path} is not a Hugging Face tokenizers JSON file: {err}") from None


def eod_id(tok: Tokenizer) -> int:
    """The end-of-document id gpt-neox appends (its HFTokenizer.eod)."""
    eod = tok.token_to_id(EOD_TOKEN)
    if eod is None:
        raise ValueError(f"the tokenizer has no {EOD_TOKEN} token, which marks document ends")
    return eod
