"""The tokenize stage: Pile-format shards -> one GPT-NeoX mmap indexed dataset `{prefix}_text_document`.

Byte-compatible with gpt-neox's `tools/datasets/preprocess_data.py --append-eod` on the same shards (in name
order) and tokenizer: each document's ids followed by the EOD id, one sequence per document, empty documents
skipped. Byte-level BPE tokenizers are encoded with tiktoken (`fast_bpe`) when it agrees with `tokenizers`
on a sample of the corpus; the manifest records which engine ran. Chunks of shards (`chunks.py`) are tokenized
in parallel as Ray tasks (on local cores or a cluster), each streaming its documents in batches into a part file;
the parts are concatenated in order, so the output is the same whatever the worker count and chunk size. A
document longer than MAX_PIECE_CHARS is encoded in pieces cut where the pre-tokenizer cuts anyway
(`safe_pieces`), so a 50 MB document does not need gigabytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from neox.data.chunks import DEFAULT_CHUNK_MB, Chunk, map_chunks, read_chunk
from neox.data.fast_bpe import agrees_on, fast_encoder, is_plain_byte_level
from neox.data.indexed import merge_parts, token_dtype
from neox.data.jsonl import Rejects, list_shards, merge_rejects, read_shard, rejects_summary
from neox.data.splits import SPLITS, SPLITS_FILE, read_splits, split_of, write_splits
from neox.data.tokenizer import eod_id, load_tokenizer
from neox.errors import DataError
from neox.pipeline.configfile import PlainName, Positive, section
from neox.pipeline.layout import TOKENIZER_FILE
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, read_manifest, run_stage, sha256_file
from neox.runtime.ray_cluster import ensure_ray

STAGE = "tokenize"
TOKENIZED_STAGES = (STAGE, "instructions")  # outputs training reads: text, or text and labels
CODE_VERSION = "3"  # 2: the tokenizer is stored with the dataset; 3: lone surrogates are rejects, named splits
MAX_PIECE_CHARS = 1 << 20  # a longer document is encoded piece by piece (tokenizers needs ~200 B per character)
SAMPLE_CHARS = 1 << 16  # of each document the engines are compared on


@section
class TokenizeConfig:
    """`data.tokenize`: the GPT-NeoX mmap indexed dataset the shards are tokenized into."""

    prefix: PlainName = "corpus"
    """Output file names: PREFIX_text_document.bin and .idx."""
    batch_size: Positive = 1000
    """Documents per encode_batch call."""


# Where the GPT-2 split pattern always ends one match and starts the next: before a single space, tab or newline
# between two non-space characters. The match holding the character before it cannot take whitespace, the next one
# starts there (` ?X+` or a whitespace token) and looks no further back; NFC never composes across a space. Python's
# \S excludes more than the pattern's (every Unicode White_Space character is str.isspace), which only skips cuts.
CUT = re.compile(r"(?<=\S)[ \t\n](?=\S)")


def safe_pieces(text: str, max_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at most about `max_chars` whose ids, concatenated, are the ids of the whole text, for a
    byte-level BPE with the GPT-2 split pattern (`fast_bpe.is_plain_byte_level`): pieces end at a `CUT`, the last one
    in the window (or the first after it). Text without such a place (a long run of CJK, say) stays whole."""
    start = 0
    while len(text) - start > max_chars:
        cut = _last_cut(text, start + 1, start + max_chars) or _first_cut(text, start + max_chars)
        if cut is None:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def _fits(text: str, cut: int) -> bool:
    return unicodedata.combining(text[cut + 1]) == 0  # a combining mark after the space: no cut, to be safe


def _last_cut(text: str, start: int, end: int) -> int | None:
    cut = None
    for match in CUT.finditer(text, start, end):
        if _fits(text, match.start()):
            cut = match.start()
    return cut


def _first_cut(text: str, start: int) -> int | None:
    return next((m.start() for m in CUT.finditer(text, start) if _fits(text, m.start())), None)


def encode_documents(
    texts: list[str], encode_many: Callable[[list[str]], list[Sequence[int]]], dtype: np.dtype, splittable: bool
) -> list[np.ndarray]:
    """Each text's ids: the usual ones in one batch, a long one piece by piece (`safe_pieces`) when the tokenizer
    is a plain byte-level BPE (another may add special tokens per call, or split elsewhere)."""
    encoded: list[np.ndarray | None] = [None] * len(texts)
    usual = [i for i, text in enumerate(texts) if len(text) <= MAX_PIECE_CHARS or not splittable]
    for i, ids in zip(usual, encode_many([texts[i] for i in usual]), strict=True):
        encoded[i] = np.asarray(ids, dtype=dtype)
    for i in (i for i, text in enumerate(texts) if len(text) > MAX_PIECE_CHARS and splittable):
        encoded[i] = np.concatenate(
            [np.asarray(encode_many([piece])[0], dtype=dtype) for piece in safe_pieces(texts[i])]
        )
    return encoded


@functools.lru_cache(maxsize=2)  # a Ray worker runs many chunks: build the (50k-token) engines once per process
def encoders(tokenizer_json: str, fast: bool) -> tuple[Any, Callable[[list[str]], list[Sequence[int]]]]:
    """The tokenizer, and a function encoding a batch of texts with the chosen engine."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    if fast:
        encode_fast = fast_encoder(tokenizer_json)
        return tok, lambda texts: [encode_fast(text) for text in texts]
    return tok, lambda texts: [e.ids for e in tok.encode_batch_fast(texts)]


def tokenize_chunk(chunk: Chunk, tokenizer_json: str, part: Path, batch_size: int, fast: bool) -> dict[str, Any]:
    """Tokenize one chunk into `part`.bin with its sequence sizes in `part`.sizes.npy (+ `part`.rejects.jsonl);
    return its counts. `fast` uses the tiktoken engine (already checked to agree with `tokenizers` on this corpus)."""
    tok, encode_many = encoders(tokenizer_json, fast)
    splittable = is_plain_byte_level(tokenizer_json)
    eod = np.array([eod_id(tok)], dtype=token_dtype(tok.get_vocab_size()))
    rejects = Rejects(part.with_suffix(".rejects.jsonl"))
    sizes: list[int] = []
    documents, empty, sets = 0, 0, Counter()
    try:
        with open(part.with_suffix(".bin"), "wb") as out:
            docs = read_chunk(chunk, rejects)
            while batch := list(itertools.islice(docs, batch_size)):
                encoded = encode_documents([doc.text for doc in batch], encode_many, eod.dtype, splittable)
                pieces = []
                for doc, ids in zip(batch, encoded, strict=True):
                    documents += 1
                    sets[doc.set_name] += 1
                    if not len(ids):
                        empty += 1  # gpt-neox writes no sequence for an empty document
                        continue
                    pieces += [ids, eod]
                    sizes.append(len(ids) + 1)
                if pieces:
                    np.concatenate(pieces).tofile(out)
    finally:
        rejects.close()
    np.save(part.with_suffix(".sizes.npy"), np.asarray(sizes, dtype=np.int32))
    return {
        "sequences": len(sizes),
        "tokens": int(sum(sizes)),
        "documents": documents,
        "empty": empty,
        "sets": dict(sets),
        "reject_counts": rejects.counts,
    }


def tokenize_shards(
    input_dir: str | Path,
    tokenizer_file: str | Path,
    work_root: str | Path,
    cfg: TokenizeConfig = TokenizeConfig(),
    workers: int | None = None,
    ray_address: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_MB << 20,
) -> StageResult:
    """Run (or reuse) the tokenize stage. `workers` caps the chunks tokenized at once (default: as many as Ray has
    CPUs), `chunk_bytes` the text one task reads; neither changes the output."""
    shards = list_shards(input_dir)
    held_out = read_splits(input_dir)
    tok = load_tokenizer(tokenizer_file)

    def body(run: StageRun) -> None:
        tokenizer_json = tok.to_str()
        # the engines are compared (~1 s) while Ray starts, which is mostly waiting for its processes
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            agreement = pool.submit(_fast_engine_agrees, tokenizer_json, shards[0])
            ensure_ray(ray_address)
            fast = agreement.result()
        task = ray.remote(num_cpus=1)(tokenize_chunk)
        tokenizer_ref = ray.put(tokenizer_json)  # stored once, not copied into every task's arguments
        parts_dir = run.tmp / "parts"
        parts_dir.mkdir()
        (parts_dir / "chunks").mkdir()
        chunks, ordered = map_chunks(
            shards,
            chunk_bytes,
            parts_dir / "chunks",
            task,
            lambda c: (tokenizer_ref, parts_dir / c.label, cfg.batch_size, fast),
            workers,
            desc="tokenize",
        )
        documents = sum(r["documents"] for r in ordered)
        if documents == 0:
            rejected = rejects_summary(sum((Counter(r["reject_counts"]) for r in ordered), Counter()))
            raise DataError(f"no documents in {input_dir}: every line was empty or rejected ({rejected})")
        dtype = token_dtype(tok.get_vocab_size())
        per_split = {}
        for split in sorted({split_of(s, held_out) for s in shards}, key=SPLITS.index):
            prefix = run.tmp / split_prefix_name(cfg.prefix, split)
            mine = [(c, r) for c, r in zip(chunks, ordered, strict=True) if split_of(c.shard, held_out) == split]
            parts = [(parts_dir / f"{c.label}.bin", parts_dir / f"{c.label}.sizes.npy") for c, _ in mine]
            per_split[split] = {
                "data_prefix": prefix.name,
                "documents": sum(r["documents"] for _, r in mine),
                "sequences": sum(r["sequences"] for _, r in mine),
                "tokens": merge_parts(prefix, parts, dtype),
            }
        if "train" not in per_split:
            raise DataError(f"{input_dir}: every shard is held out ({SPLITS_FILE}); nothing is left to train on")
        reject_counts = merge_rejects(
            [
                (parts_dir / f"{c.label}.rejects.jsonl", r["reject_counts"])
                for c, r in zip(chunks, ordered, strict=True)
            ],
            run.tmp / "rejects.jsonl",
        )
        shutil.rmtree(parts_dir)
        shutil.copyfile(tokenizer_file, run.tmp / TOKENIZER_FILE)  # the dataset says how to decode it
        write_splits(run.tmp, held_out)
        run.stats.update(
            documents=documents,
            sequences=sum(r["sequences"] for r in ordered),
            empty_documents=sum(r["empty"] for r in ordered),
            tokens=sum(split["tokens"] for split in per_split.values()),
            rejects=reject_counts,
            documents_per_set=dict(sum((Counter(r["sets"]) for r in ordered), Counter())),
            shards=[shard.name for shard in shards],
            chunks=len(chunks),
            dtype=dtype.name,
            vocab_size=tok.get_vocab_size(),
            eod_id=eod_id(tok),
            data_prefix=per_split["train"]["data_prefix"],
            engine="tiktoken" if fast else "tokenizers",
            **({"splits": per_split} if held_out else {}),
        )

    inputs = {"shards": input_fingerprint(input_dir), "tokenizer": sha256_file(tokenizer_file)}
    return run_stage(work_root, STAGE, CODE_VERSION, dataclasses.asdict(cfg), inputs, body)


def _fast_engine_agrees(tokenizer_json: str, shard: Path, sample_docs: int = 200) -> bool:
    """Whether the tiktoken engine can stand in for `tokenizers`: it reproduces this tokenizer and gives the
    same ids on the first documents of the corpus."""
    encode = fast_encoder(tokenizer_json)
    if encode is None:
        return False
    sample = (doc.text[:SAMPLE_CHARS] for doc in itertools.islice(read_shard(shard, Rejects()), sample_docs))
    return agrees_on(encode, tokenizer_json, sample)


def split_prefix_name(prefix: str, split: str) -> str:
    """gpt-neox's name for a dataset, PREFIX_text_document; a held-out split's has the split in it."""
    return f"{prefix}_text_document" if split == "train" else f"{prefix}_{split}_text_document"


def tokenized_stats(output: str | Path) -> dict[str, Any]:
    manifest = read_manifest(output)
    if manifest.get("stage") not in TOKENIZED_STAGES:
        raise DataError(
            f"{output} is a {manifest.get('stage')} stage output, not a tokenized dataset (neox tokenize, or "
            "instructions for fine-tuning)"
        )
    return manifest["stats"]


def data_prefix(output: str | Path) -> Path:
    """The `.bin/.idx` prefix inside a tokenize stage output: its training data (all of it, without named splits)."""
    return Path(output) / tokenized_stats(output)["data_prefix"]


def label_prefix(output: str | Path) -> Path | None:
    """The label dataset's prefix (-100 where the loss does not score) of an instructions stage output, else None."""
    name = tokenized_stats(output).get("label_prefix")
    return Path(output) / name if name else None


def named_split_prefixes(output: str | Path) -> dict[str, Path]:
    """The `.bin/.idx` prefix of each named split (train, and valid and/or test) of a tokenize stage output, or
    nothing when it has no named splits (its data_prefix is then cut by a positional split)."""
    splits = tokenized_stats(output).get("splits", {})
    return {split: Path(output) / entry["data_prefix"] for split, entry in splits.items()}
