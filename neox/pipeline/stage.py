"""The stage contract (docs/architecture.md), as one helper every stage goes through (`run_stage`): a stage's output
lives at `<work_root>/<stage>/<key>/`, where `key` hashes the stage's config section, its inputs' keys and its code
version. Under a lock per key, an output whose manifest verifies (every file's sha256 and size) is reused; a
damaged one is said on the console and redone; otherwise the stage body writes into a temporary sibling, which is
renamed into place ending with `manifest.json` (files, counts, stats, inputs, timings). The result says which."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from neox.errors import DataError, MissingInput
from neox.pipeline.atomic import atomic_directory, file_lock
from neox.pipeline.layout import SHARD_SUFFIXES

MANIFEST = "manifest.json"
# what a desktop's file browser leaves in any folder it shows; no stage reads them, so they do not void an output
OS_METADATA = frozenset({"Thumbs.db", "desktop.ini"})


class ManifestError(DataError):
    """A stage output whose manifest is missing, malformed, or does not match the files on disk."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stage_key(stage: str, code_version: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
    """16 hex digits of sha256 over the canonical JSON of everything the output depends on."""
    payload = json.dumps(
        {"stage": stage, "code_version": code_version, "config": config, "inputs": inputs}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclasses.dataclass
class StageRun:
    """What a stage body fills in while it writes into `tmp`: its stats (counts, timings) for the manifest, and the
    sha256 of files it hashed as it wrote them (by path in `tmp`), which the manifest then takes without reading
    them again."""

    tmp: Path
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    hashed: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StageResult:
    """A stage's output folder, and whether a verified earlier output was reused rather than written now."""

    path: Path
    reused: bool


def run_stage(
    work_root: str | Path,
    stage: str,
    code_version: str,
    config: dict[str, Any],
    inputs: dict[str, str],
    body: Callable[[StageRun], None],
    reuse_if: Callable[[Path], bool] = lambda output: True,
    on_publish: Callable[[Path], None] = lambda output: None,
) -> StageResult:
    """Reuse the verified output of this key, or run `body` (writing into `run.tmp`, filling `run.stats`) and
    publish it. Concurrent runs of the same key take turns; the second reuses the first's output. `reuse_if`
    vouches for an output beyond its manifest, and one it refuses is redone; `on_publish` runs on a new output
    while the key's lock is still held, so no other run sees it before it has (the eval stage records it in
    MLflow there, which its `reuse_if` asks for)."""
    key = stage_key(stage, code_version, config, inputs)
    output = stage_output(work_root, stage, key)
    # lock files stay (removing one races a process about to take it); they live apart from the outputs
    with file_lock(Path(work_root) / ".locks" / f"{stage}-{key}.lock"):
        remove_leftovers(stage, output)
        if (output / MANIFEST).exists():
            try:
                verify_output(output)
                if reuse_if(output):
                    return StageResult(output, reused=True)
                print(f"{stage}: nothing vouches for {output}; redoing the stage", file=sys.stderr, flush=True)
                set_aside = output.parent / f".{output.name}.old-untrusted"
                os.rename(output, set_aside)  # gone in one step; remove_leftovers clears what a kill leaves
                shutil.rmtree(set_aside)
            except ManifestError as err:
                print(f"{stage}: {err}; redoing the stage", file=sys.stderr, flush=True)
        with publish_stage(work_root, stage, code_version, config, inputs) as run:
            body(run)
        on_publish(output)
    return StageResult(output, reused=False)


def remove_leftovers(stage: str, output: Path) -> None:
    """Remove what a killed attempt at this output left beside it: its temporary folder, or the old output a swap
    was replacing. Called under the key's lock, so no live run owns them (other keys' folders are not touched)."""
    for leftover in sorted(
        [*output.parent.glob(f".{output.name}.tmp-*"), *output.parent.glob(f".{output.name}.old-*")]
    ):
        print(f"{stage}: removing {leftover}, left by an attempt that was stopped", file=sys.stderr, flush=True)
        shutil.rmtree(leftover, ignore_errors=True)


def stage_output(work_root: str | Path, stage: str, key: str) -> Path:
    return Path(work_root) / stage / key


@contextlib.contextmanager
def publish_stage(
    work_root: str | Path, stage: str, code_version: str, config: dict[str, Any], inputs: dict[str, str]
) -> Iterator[StageRun]:
    """Run a stage body that writes into `run.tmp`; on success write the manifest and publish atomically.
    An exception leaves no output behind."""
    key = stage_key(stage, code_version, config, inputs)
    started = time.time()
    # an intact output of this key was published meanwhile by a concurrent run: keep it, readers may use it
    with atomic_directory(stage_output(work_root, stage, key), overwrite=True, keep=is_intact) as tmp:
        run = StageRun(tmp)
        yield run
        files = {
            str(p.relative_to(tmp)): {
                "sha256": run.hashed.get(str(p.relative_to(tmp))) or sha256_file(p),
                "bytes": p.stat().st_size,
            }
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "stage": stage,
            "key": key,
            "code_version": code_version,
            "config": config,
            "inputs": inputs,
            "files": files,
            "stats": run.stats,
            "started_at": started,
            "seconds": round(time.time() - started, 3),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")


def read_manifest(output: str | Path) -> dict[str, Any]:
    path = Path(output) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{output} has no {MANIFEST}: not a completed stage output") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON: {err}") from None


def verify_output(output: str | Path) -> dict[str, Any]:
    """The manifest, after checking every listed file's size and sha256 against the disk, and that no other file
    is there: a later stage reading the folder (every shard in it) would take a stray file in."""
    manifest = read_manifest(output)
    listed = {*manifest["files"], MANIFEST}
    stray = sorted(
        name
        for path in Path(output).rglob("*")
        if path.is_file() and (name := str(path.relative_to(output))) not in listed and not left_by_tools(Path(name))
    )
    if stray:
        raise ManifestError(
            f"{output} holds {len(stray)} file(s) its manifest does not list ({', '.join(stray[:5])}"
            f"{', ...' if len(stray) > 5 else ''}): not the stage's output as published"
        )
    for name, expected in manifest["files"].items():
        path = Path(output) / name
        if not path.is_file():
            raise ManifestError(f"{path} is listed in the manifest but missing")
        if path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            raise ManifestError(f"{path} does not match its manifest entry (size or sha256 differs)")
    return manifest


def left_by_tools(relative: Path) -> bool:
    """A file an editor, a file browser or a network file system leaves (`.x.swp`, `.DS_Store`, `._x`, `.nfs*`,
    `Thumbs.db`) and no stage reads: hidden unless shard-named, or a desktop's own. Voiding hours of a stage's
    output over one would be worse than keeping it."""
    hidden = any(part.startswith(".") for part in relative.parts)
    return relative.name in OS_METADATA or (hidden and not relative.name.endswith(SHARD_SUFFIXES))


def is_intact(output: Path) -> bool:
    try:
        verify_output(output)
        return True
    except ManifestError:
        return False


def input_fingerprint(path: str | Path) -> str:
    """What an input contributes to a stage key: a stage output's key (after verifying it), or for a plain
    directory of files the sha256 over their names and contents."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist")
    if (path / MANIFEST).exists():
        return verify_output(path)["key"]
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
