"""The embedded corpus: Pile-format shards built from text every Python install carries, so `make demo` and
the tests need no download. The standard library's `.py` sources become `Github` documents and
`pydoc_data.topics` become `Docs` documents (about 32 MB, ~1,900 documents on CPython 3.11). The result is
deterministic for a given Python version."""

from __future__ import annotations

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


def build_sample_corpus(out_dir: str | Path, shards: int = 4, seed: int = 0) -> list[Path]:
    """Write the corpus as `00.jsonl.zst` … shards of near-equal document counts, documents shuffled with
    `seed` so every shard (and every split cut from the end) mixes both sources."""
    if shards < 1:
        raise ConfigError(f"shards must be at least 1, got {shards}")
    out_dir = make_folder(out_dir)
    documents = list(stdlib_documents()) + list(pydoc_documents())
    random.Random(seed).shuffle(documents)
    paths = []
    for i in progress(range(shards), desc="sample corpus", unit="shard"):
        path = out_dir / f"{i:02d}.jsonl.zst"
        write_shard(path, documents[i::shards])
        paths.append(path)
    return paths
