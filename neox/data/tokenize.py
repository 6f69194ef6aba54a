"""The tokenize stage: Pile-format shards -> one GPT-NeoX mmap indexed dataset `{prefix}_text_document`.

Byte-compatible with gpt-neox's `tools/datasets/preprocess_data.py --append-eod` on the same shards (in name
order) and tokenizer: each document's ids followed by the EOD id, one sequence per document, empty documents
skipped. Byte-level BPE tokenizers are encoded with tiktoken (`fast_bpe`) when it agrees with `tokenizers`
on a sample of the corpus; the manifest records which engine ran. Shards are tokenized in parallel as Ray tasks
(one per shard, on local cores or a cluster), each writing a part file; the parts are concatenated in shard
order, so the output is the same whatever the worker count.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import ray

from neox.data.fast_bpe import agrees_on, fast_encoder
from neox.data.indexed import merge_parts, token_dtype
from neox.data.jsonl import Rejects, list_shards, merge_rejects, read_shard
from neox.data.tokenizer import eod_id, load_tokenizer
from neox.errors import DataError
from neox.pipeline.configfile import PlainName, Positive, section
from neox.pipeline.layout import TOKENIZER_FILE
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, read_manifest, run_stage, sha256_file
from neox.runtime.ray_cluster import ensure_ray, run_ordered

STAGE = "tokenize"
CODE_VERSION = "2"  # 2: the tokenizer is stored with the dataset


@section
class TokenizeConfig:
    """`data.tokenize`: the GPT-NeoX mmap indexed dataset the shards are tokenized into."""

    prefix: PlainName = "corpus"
    """Output file names: PREFIX_text_document.bin and .idx."""
    batch_size: Positive = 1000
    """Documents per encode_batch call."""


def tokenize_shard(shard: Path, tokenizer_json: str, part: Path, batch_size: int, fast: bool) -> dict[str, Any]:
    """Tokenize one shard into `part`.bin (+ `part`.rejects.jsonl); return its sizes and counts. `fast` uses
    the tiktoken engine (already checked to agree with `tokenizers` on this corpus)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    encode_fast = fast_encoder(tokenizer_json) if fast else None
    eod = eod_id(tok)
    dtype = token_dtype(tok.get_vocab_size())
    rejects = Rejects(part.with_suffix(".rejects.jsonl"))
    sizes: list[int] = []
    documents, empty, sets = 0, 0, Counter()
    try:
        with open(part.with_suffix(".bin"), "wb") as out:
            docs = read_shard(shard, rejects)
            while batch := list(itertools.islice(docs, batch_size)):
                if encode_fast is not None:
                    encoded = [encode_fast(doc.text) for doc in batch]
                else:
                    encoded = [e.ids for e in tok.encode_batch_fast([doc.text for doc in batch])]
                pieces = []
                for doc, ids in zip(batch, encoded, strict=True):
                    documents += 1
                    sets[doc.set_name] += 1
                    if not ids:
                        empty += 1  # gpt-neox writes no sequence for an empty document
                        continue
                    pieces.append(ids)
                    pieces.append([eod])
                    sizes.append(len(ids) + 1)
                if pieces:
                    np.fromiter(itertools.chain.from_iterable(pieces), dtype=dtype).tofile(out)
    finally:
        rejects.close()
    return {
        "shard": shard.name,
        "bin": str(part.with_suffix(".bin")),
        "rejects": str(part.with_suffix(".rejects.jsonl")),
        "sizes": np.asarray(sizes, dtype=np.int32),
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
) -> StageResult:
    """Run (or reuse) the tokenize stage. `workers` caps the shards tokenized at once (default: as many as Ray has
    CPUs)."""
    shards = list_shards(input_dir)
    tok = load_tokenizer(tokenizer_file)

    def body(run: StageRun) -> None:
        ensure_ray(ray_address)
        task = ray.remote(num_cpus=1)(tokenize_shard)
        parts_dir = run.tmp / "parts"
        parts_dir.mkdir()
        tokenizer_json = tok.to_str()
        fast = _fast_engine_agrees(tokenizer_json, shards[0])
        calls = [
            (task, (shard, tokenizer_json, parts_dir / f"{i:05d}", cfg.batch_size, fast))
            for i, shard in enumerate(shards)
        ]
        ordered = run_ordered(calls, workers, desc="tokenize", unit="shard")
        documents = sum(r["documents"] for r in ordered)
        if documents == 0:
            raise DataError(f"no documents in {input_dir}: every line was empty or rejected (see rejects)")
        dtype = token_dtype(tok.get_vocab_size())
        prefix = run.tmp / f"{cfg.prefix}_text_document"
        tokens = merge_parts(prefix, ((Path(r["bin"]), r["sizes"]) for r in ordered), dtype)
        reject_counts = merge_rejects(
            [(Path(r["rejects"]), r["reject_counts"]) for r in ordered], run.tmp / "rejects.jsonl"
        )
        shutil.rmtree(parts_dir)
        shutil.copyfile(tokenizer_file, run.tmp / TOKENIZER_FILE)  # the dataset says how to decode it
        run.stats.update(
            documents=documents,
            sequences=int(sum(len(r["sizes"]) for r in ordered)),
            empty_documents=sum(r["empty"] for r in ordered),
            tokens=tokens,
            rejects=reject_counts,
            documents_per_set=dict(sum((Counter(r["sets"]) for r in ordered), Counter())),
            shards=[r["shard"] for r in ordered],
            dtype=dtype.name,
            vocab_size=tok.get_vocab_size(),
            eod_id=eod_id(tok),
            data_prefix=prefix.name,
            engine="tiktoken" if fast else "tokenizers",
        )

    inputs = {"shards": input_fingerprint(input_dir), "tokenizer": sha256_file(tokenizer_file)}
    return run_stage(work_root, STAGE, CODE_VERSION, dataclasses.asdict(cfg), inputs, body)


def _fast_engine_agrees(tokenizer_json: str, shard: Path, sample_docs: int = 200) -> bool:
    """Whether the tiktoken engine can stand in for `tokenizers`: it reproduces this tokenizer and gives the
    same ids on the first documents of the corpus."""
    encode = fast_encoder(tokenizer_json)
    if encode is None:
        return False
    sample = (doc.text for doc in itertools.islice(read_shard(shard, Rejects()), sample_docs))
    return agrees_on(encode, tokenizer_json, sample)


def data_prefix(output: str | Path) -> Path:
    """The `.bin/.idx` prefix inside a tokenize stage output."""
    manifest = read_manifest(output)
    if manifest.get("stage") != STAGE:
        raise DataError(f"{output} is a {manifest.get('stage')} stage output, not a tokenized dataset (neox tokenize)")
    return Path(output) / manifest["stats"]["data_prefix"]
