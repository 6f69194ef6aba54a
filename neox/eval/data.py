"""The eval-data stage: offline lm-eval task data from the held-out (test) split of a tokenized dataset.

The test split is the same document range training leaves out (`split_boundaries`, as GPT2Dataset uses it),
so no evaluation document was trained on. Each document is decoded from its tokens, and two files are written:

- `heldout.jsonl` ({"text"}): whole documents, for perplexity through `loglikelihood_rolling` (like wikitext);
- `lastword.jsonl` ({"context", "target"}): LAMBADA-style passages, the document's first `lastword_chars`
  characters up to a final word of 3+ letters, which the model must predict;
- `responses.jsonl` ({"context", "target"}), for fine-tuning data only: each assistant turn and the chat before it,
  for the response-only loss (`neox_response`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from neox.data.dataset import IGNORE_INDEX, split_boundaries
from neox.data.indexed import IndexedDataset
from neox.data.splits import SPLITS
from neox.data.tokenize import data_prefix, label_prefix, named_split_prefixes
from neox.data.tokenizer import eod_id, load_tokenizer
from neox.errors import ConfigError
from neox.eval.config import EvalDataConfig
from neox.pipeline.layout import TOKENIZER_FILE
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, run_stage

STAGE = "eval-data"
CODE_VERSION = "2"  # 2: named splits
HELDOUT_FILE = "heldout.jsonl"
LASTWORD_FILE = "lastword.jsonl"
RESPONSES_FILE = "responses.jsonl"
WORD = re.compile(r"\b[A-Za-z]{3,}\b")


def lastword_passage(text: str, max_chars: int) -> dict[str, str] | None:
    """The passage ending at the last 3+-letter word that starts within the first max_chars characters."""
    last = None
    for match in WORD.finditer(text):
        if match.start() > max_chars:
            break
        last = match
    if last is None or not text[: last.start()].strip():
        return None
    return {"context": text[: last.start()].rstrip(), "target": last.group()}


def scored_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive scored positions (labels other than -100)."""
    scored = np.concatenate([[False], labels != IGNORE_INDEX, [False]])
    edges = np.flatnonzero(scored[1:] != scored[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def write_responses(indexed: IndexedDataset, labels: IndexedDataset, documents: range, tok, path: Path) -> int:
    """One {"context", "target"} line per scored run (an assistant turn) of each held-out example: the text before
    it, as training saw it, and the turn. Returns the line count."""
    count = 0
    with open(path, "w") as out:
        for index in documents:
            tokens = [int(t) for t in indexed[index]]
            for first, last in scored_runs(labels[index]):
                context = tok.decode(tokens[:first], skip_special_tokens=False)
                target = tok.decode(tokens[first:last], skip_special_tokens=False)
                out.write(json.dumps({"context": context, "target": target, "document": index}) + "\n")
                count += 1
    if not count:
        raise ConfigError(f"the held-out examples {documents.start}..{documents.stop - 1} have no scored response")
    return count


def part_documents(tokenized: str | Path, split: str, part: str) -> tuple[Path, int, int]:
    """The prefix and [start, end) document indices of one part: with named splits, the whole of that split's
    dataset; else that part of the positional split (the ranges GPT2Dataset reads)."""
    named = named_split_prefixes(tokenized)
    if named:
        return (named[part], 0, len(IndexedDataset(named[part]))) if part in named else (data_prefix(tokenized), 0, 0)
    indexed = IndexedDataset(data_prefix(tokenized))
    bounds = split_boundaries(split, len(indexed))
    index = SPLITS.index(part)
    return data_prefix(tokenized), bounds[index], bounds[index + 1]


def eval_data_stage(
    tokenized: str | Path, work_root: str | Path, cfg: EvalDataConfig = EvalDataConfig()
) -> StageResult:
    """Run (or reuse) the eval-data stage."""

    def body(run: StageRun) -> None:
        prefix, start, end = part_documents(tokenized, cfg.split, cfg.part)
        if end <= start:
            if named_split_prefixes(tokenized):
                raise ConfigError(
                    f"{tokenized} has named splits but no {cfg.part} one: give data.{cfg.part}_sources (or use the "
                    f"part that exists)"
                )
            raise ConfigError(f"split {cfg.split!r} leaves no {cfg.part} documents: give the {cfg.part} part a weight")
        tok = load_tokenizer(Path(tokenized) / TOKENIZER_FILE)
        eod = eod_id(tok)
        indexed = IndexedDataset(prefix)
        documents = passages = 0
        with open(run.tmp / HELDOUT_FILE, "w") as heldout, open(run.tmp / LASTWORD_FILE, "w") as lastword:
            for index in range(start, min(end, start + cfg.max_documents)):
                text = tok.decode([int(t) for t in indexed[index] if t != eod], skip_special_tokens=False)
                if not text.strip():
                    continue
                heldout.write(json.dumps({"text": text, "document": index}) + "\n")
                documents += 1
                passage = lastword_passage(text, cfg.lastword_chars)
                if passage is not None:
                    lastword.write(json.dumps({**passage, "document": index}) + "\n")
                    passages += 1
        if not documents or not passages:
            raise ConfigError(f"the {cfg.part} split of {tokenized} yields no usable documents")
        labels = label_prefix(tokenized)
        responses = (
            write_responses(
                indexed,
                IndexedDataset(labels),
                range(start, min(end, start + cfg.max_documents)),
                tok,
                run.tmp / RESPONSES_FILE,
            )
            if labels is not None
            else None
        )
        run.stats.update(
            documents=documents,
            passages=passages,
            **({"responses": responses} if responses is not None else {}),
            dataset=prefix.name,
            document_range=[start, end],
            train_range=list(part_documents(tokenized, cfg.split, "train")[1:]),
        )

    inputs = {"tokenized": input_fingerprint(tokenized)}
    return run_stage(work_root, STAGE, CODE_VERSION, dataclasses.asdict(cfg), inputs, body)
