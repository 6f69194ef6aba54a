"""The tokenizer stage's library side: train a byte-level BPE like GPT-NeoX-20B's, or load an existing
`tokenizer.json` (e.g. EleutherAI's `20B_tokenizer.json`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from neox.data.download import Source, download_sources
from neox.data.jsonl import Rejects, list_shards, read_shard
from neox.data.splits import read_splits
from neox.errors import ConfigError, DataError, MissingInput
from neox.pipeline.layout import TOKENIZER_FILE
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, run_stage, sha256_file

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS = [EOD_TOKEN, PAD_TOKEN]  # ids 0 and 1, as in the 20B tokenizer
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # the byte alphabet and the special tokens
DEFAULT_VOCAB_SIZE = 50277  # GPT-NeoX-20B's


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
    """A byte-level BPE with the 20B tokenizer's pipeline: NFC normalisation, ByteLevel pre-tokenizer (GPT-2
    split pattern, no prefix space), ByteLevel decoder and post-processor, special tokens <|endoftext|> and
    <|padding|> first."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (the byte alphabet + specials)")
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
        raise MissingInput(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        raise DataError(f"{path} is not a Hugging Face tokenizers JSON file: {err}") from None


def eod_id(tok: Tokenizer) -> int:
    """The end-of-document id gpt-neox appends (its HFTokenizer.eod)."""
    eod = tok.token_to_id(EOD_TOKEN)
    if eod is None:
        raise DataError(f"the tokenizer has no {EOD_TOKEN} token, which marks document ends")
    return eod


STAGE = "tokenizer"
CODE_VERSION = "1"


def tokenizer_stage(
    work_root: str | Path, vocab_size: int, input_dir: str | Path | None = None, source: str | None = None
) -> StageResult:
    """Run (or reuse) the tokenizer stage: train a BPE on the shards in input_dir, or take an existing
    tokenizer.json from `source` (a path or URL, fetched by the download stage). Its output folder holds
    tokenizer.json, with its sha256 and vocabulary size in the manifest."""
    if (input_dir is None) == (source is None):
        raise ConfigError("give either input shards to train on or an existing tokenizer source, not both")
    if source is not None:
        fetched = download_sources([Source(source, name=TOKENIZER_FILE)], work_root).path / TOKENIZER_FILE
        config, inputs = {"source": source}, {"tokenizer": sha256_file(fetched)}
    else:
        config, inputs = {"vocab_size": vocab_size}, {"shards": input_fingerprint(input_dir)}

    def body(run: StageRun) -> None:
        if source is not None:
            shutil.copyfile(fetched, run.tmp / TOKENIZER_FILE)
            tok = load_tokenizer(run.tmp / TOKENIZER_FILE)
        else:
            rejects = Rejects()
            held_out = read_splits(input_dir)  # validation and test text stays unseen
            shards = [shard for shard in list_shards(input_dir) if shard.name not in held_out]
            texts = (doc.text for shard in shards for doc in read_shard(shard, rejects))
            tok = train_bpe(texts, vocab_size)
            tok.save(str(run.tmp / TOKENIZER_FILE))
        run.stats.update(
            vocab_size=tok.get_vocab_size(), eod_id=eod_id(tok), sha256=sha256_file(run.tmp / TOKENIZER_FILE)
        )

    return run_stage(work_root, STAGE, CODE_VERSION, config, inputs, body)
