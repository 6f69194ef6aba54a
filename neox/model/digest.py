"""The digest of a model checkpoint: every file of its folder and of its Hugging Face export beside it.

It keys an evaluation and is recorded with it, and registration checks it. The checkpoint lies in a work root
more than the pipeline can write, so hashing it and then reading it again would leave a window in which its files
could be swapped: what was scored, or what is uploaded, would not be what was hashed. `snapshot=` closes it: the
files are copied to a private folder as they are hashed, and the reader uses the copy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from neox.pipeline.layout import HF_DIR, MODEL_DIR, hf_export_of
from neox.pipeline.stage import sha256_file

CHUNK = 1 << 22


def checkpoint_files(checkpoint: Path) -> list[tuple[str, Path]]:
    """(name in the digest, path) of every file of the checkpoint (model/...) and of its export (hf/...)."""
    parts = [(MODEL_DIR, Path(checkpoint)), (HF_DIR, hf_export_of(checkpoint))]
    return [
        (f"{part}/{path.relative_to(folder)}", path)
        for part, folder in parts
        if folder.is_dir()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def checkpoint_digest(
    checkpoint: str | Path, snapshot: Path | None = None, parts: tuple[str, ...] = (MODEL_DIR, HF_DIR)
) -> str:
    """sha256 over the names and contents of every file of the checkpoint and of its Hugging Face export. With
    `snapshot`, the files of `parts` are copied there as they are hashed (snapshot/model/..., snapshot/hf/...,
    the same layout, so `hf_export_of(snapshot / "model")` is the export's copy): the copy is exactly the bytes
    the digest covers, whatever happens to the originals afterwards."""
    listing = []
    for name, path in checkpoint_files(Path(checkpoint)):
        if snapshot is not None and name.split("/", 1)[0] in parts:
            listing.append((name, copy_hashed(path, snapshot / name)))
        else:
            listing.append((name, sha256_file(path)))
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def copy_hashed(source: Path, destination: Path) -> str:
    """Copy a file, returning the sha256 of the bytes written (read once)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(destination, "wb") as dst:
        while block := src.read(CHUNK):
            digest.update(block)
            dst.write(block)
    return digest.hexdigest()
