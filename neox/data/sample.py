"""The embedded corpus: Pile-format shards built from text every Python install carries, so `make demo` and
the tests need no download. The standard library's `.py` sources become `Github` documents and
`pydoc_data.topics` become `Docs` documents (about 32 MB, ~1,900 documents on CPython 3.11). The result is
deterministic for a given Python version.

The embedded instruction set, for the fine-tuning demo, comes from the same sources: "What does the Python
function `json.dumps` do?" answered by the first paragraph of its docstring (read with `ast`, nothing imported)."""

from __future__ import annotations

import ast
import json
import os
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neox.data.jsonl import write_shard
from neox.errors import ConfigError
from neox.pipeline.atomic import make_folder
from neox.runtime.progress import progress


def stdlib_documents() -> Iterator[dict[str, Any]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if "site-packages" in relative.parts:
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # a few test files are deliberately in other encodings
        yield {"text": text, "meta": {"pile_set_name": "Github", "path": relative.as_posix()}}


def pydoc_documents() -> Iterator[dict[str, Any]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"text": topics[name], "meta": {"pile_set_name": "Docs", "path": f"pydoc_data/topics/{name}"}}


def sample_shard_names(shards: int) -> list[str]:
    """The file names a sample corpus of `shards` shards is written under."""
    if shards < 1:
        raise ConfigError(f"shards must be at least 1, got {shards}")
    return [f"{i:02d}.jsonl.zst" for i in range(shards)]


def build_sample_corpus(out_dir: str | Path, shards: int = 4, seed: int = 0) -> list[Path]:
    """Write the corpus as `00.jsonl.zst` … shards of near-equal document counts, documents shuffled with
    `seed` so every shard (and every split cut from the end) mixes both sources."""
    names = sample_shard_names(shards)
    documents = list(stdlib_documents()) + list(pydoc_documents())
    if shards > len(documents):
        raise ConfigError(f"the sample corpus has {len(documents)} documents: at most that many shards, not {shards}")
    out_dir = make_folder(out_dir)
    random.Random(seed).shuffle(documents)
    paths = []
    for i, name in enumerate(progress(names, desc="sample corpus", unit="shard")):
        path = out_dir / name
        write_shard(path, documents[i::shards])
        paths.append(path)
    return paths


def stdlib_instructions() -> Iterator[dict[str, str]]:
    """A prompt/response pair per public top-level function of the standard library's top-level modules whose
    docstring opens with a paragraph of 20 to 300 characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            first = (ast.get_docstring(node) or "").split("\n\n")[0].strip()
            if 20 <= len(first) <= 300:
                yield {
                    "prompt": f"What does the Python function `{path.stem}.{node.name}` do?",
                    "response": " ".join(first.split()),
                }


def build_sample_instructions(path: str | Path, seed: int = 0) -> Path:
    """Write the embedded instruction set as one JSONL file, shuffled with `seed` (so the held-out split mixes
    modules)."""
    examples = list(stdlib_instructions())
    random.Random(seed).shuffle(examples)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two flows on one work root may write it at once
    tmp.write_text("".join(json.dumps(example) + "\n" for example in examples))
    tmp.replace(path)
    return path
