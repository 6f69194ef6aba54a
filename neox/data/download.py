"""The download stage: fetch raw shards from http(s)://, s3://, file:// or local paths, and hf://datasets/…

Every transfer goes to `<work_root>/download/.work-<key>/.parts/<id>.part`, resumes from what a failed attempt left
there (HTTP Range, S3 ranged GETs, file offsets), retries transient faults within a deadline (`neox.runtime.retry`:
backoff with jitter, connect and read timeouts, giving up when nothing arrives for `deadline_s`), and is checked
against its sha256: the published one when the catalog has it, else the one recorded at its first download
(`<work_root>/download/known_sha256.json`), so a changed or damaged mirror file is caught on every reuse.
A mismatch deletes the file and retries; after the last try the error names the URL and both hashes. A `.zst`
shard is also decompressed as it arrives (and thrown away): one cut short or damaged at its source is deleted
and refused at once (not retried: its source would serve the same bytes), before its checksum is recorded, so
the repaired file is taken on a rerun.
Finished files wait in `.cache/` until all are done, then move into the stage output together. Concurrent
runs with the same sources take turns (a file lock per source set); the second one reuses the first's output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from neox.data.jsonl import SHARD_SUFFIXES, folder_files, not_a_shard, refuse_compressed_shards
from neox.data.splits import SPLITS, write_splits
from neox.data.transports import TRANSPORTS, DownloadError, Part, list_s3, local_path, s3_bucket_key
from neox.errors import ConfigError, MissingInput
from neox.pipeline.atomic import atomic_write_text, file_lock
from neox.pipeline.stage import StageResult, StageRun, run_stage, sha256_file, stage_key
from neox.runtime.progress import progress
from neox.runtime.retry import Clock, GaveUp, Retry, attempts, call

STAGE = "download"
CODE_VERSION = "1"


class BadTransfer(DownloadError):
    """A transfer that finished with the wrong size or content: fetched again whole."""


class ChecksumMismatch(BadTransfer):
    pass


class DamagedShard(DownloadError):
    """A `.zst` shard that arrived whole as its source serves it, but cut short or corrupt: fetching it again
    would bring the same bytes, so it is not retried."""


class EmptyFolder(MissingInput):
    """A source folder with no shards in it (yet)."""


@dataclasses.dataclass(frozen=True)
class Source:
    url: str  # http(s)://, s3://bucket/key, file:///path, a local path, or hf://datasets/ORG/NAME
    name: str = ""  # file name in the stage output (default: the URL's last path component)
    sha256: str | None = None  # published checksum, when there is one
    size: int | None = None  # published size in bytes, when known
    split: str = "train"  # or a held-out split, "valid" or "test" (see neox.data.splits)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"a source's split is one of {', '.join(SPLITS)}, got {self.split!r}")
        scheme = urllib.parse.urlparse(self.url).scheme
        if scheme not in ("", "file", "http", "https", "s3", "hf"):
            raise ConfigError(f"unsupported source scheme {scheme!r} in {self.url} (http, https, s3, file, hf)")
        if scheme == "s3" and not s3_bucket_key(self.url)[1]:
            raise ConfigError(f"{self.url}: an s3:// source names an object, s3://BUCKET/KEY (a folder ends in /)")
        if not self.name:
            object.__setattr__(self, "name", default_name(self.url))
        if "/" in self.name or not self.name:
            raise ConfigError(f"source name must be a plain file name, got {self.name!r}")
        if self.sha256 is not None:  # hex as published, either case; checked now, not after a download
            if re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256) is None:
                raise ConfigError(f"{self.url}: a sha256 is 64 hexadecimal digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", self.sha256.lower())


def default_name(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "hf":
        return parsed.path.strip("/").replace("/", "__") + ".jsonl.zst"
    return Path(parsed.path).name


def pile_catalog(
    mirror: str, splits: tuple[str, ...] = ("train", "val", "test"), train_shards: range = range(30)
) -> list[Source]:
    """The Pile's shards under a mirror base URL (the mirror keeps the original layout: train/00.jsonl.zst …
    train/29.jsonl.zst, val.jsonl.zst, test.jsonl.zst). No checksums are published with the mirrors we know
    of, so each shard's sha256 is recorded at its first download and verified on every reuse."""
    base = mirror.rstrip("/")
    sources = []
    if "train" in splits:
        sources += [Source(f"{base}/train/{i:02d}.jsonl.zst", name=f"train-{i:02d}.jsonl.zst") for i in train_shards]
    for split, named in (("val", "valid"), ("test", "test")):
        if split in splits:
            sources.append(Source(f"{base}/{split}.jsonl.zst", split=named))
    return sources


def download_one(
    source: Source, area: Path, known: KnownChecksums, retry: Retry, progress: Callable[[int], None]
) -> tuple[Path, str]:
    """Fetch one source into area/.cache (resuming, retrying, verifying); returns the verified file and its sha256,
    hashed while it arrived."""
    ident = hashlib.sha256(source.url.encode()).hexdigest()[:16]
    part, done = area / ".parts" / f"{ident}.part", area / ".cache" / ident
    expected = source.sha256 or known.get(source.url)
    if done.exists():  # fetched whole by an earlier run of the stage that failed later
        cached = sha256_file(done)
        if expected is None or cached == expected:
            progress(done.stat().st_size)
            return done, cached
    transport = TRANSPORTS[urllib.parse.urlparse(source.url).scheme]
    # one Part for every attempt: it hashes what an earlier run left once, then only the bytes that arrive
    fetching = Part(part, zstd_source=source.url if source.name.endswith(".zst") else None)
    clock, high_water = Clock(retry), fetching.size

    def arrived(n: int) -> None:
        nonlocal high_water
        progress(n)
        if fetching.size > high_water:  # bytes beyond what earlier attempts got
            high_water = fetching.size
            clock.progressed()
        else:
            clock.heard()

    try:
        for attempt in attempts(retry, source.url, clock, also_retry=lambda err: isinstance(err, BadTransfer)):
            with attempt:  # each attempt resumes from the bytes the failed one left
                transport(source.url, fetching, clock.timeout(), arrived)
                verify_transfer(source, fetching, expected)
    except GaveUp as err:
        if isinstance(err.__cause__, ChecksumMismatch):
            raise ChecksumMismatch(f"{err} (the bad file was deleted)") from None
        raise DownloadError(str(err)) from None
    known.record(source.url, fetching.sha256)
    os.replace(part, done)
    return done, fetching.sha256


def verify_transfer(source: Source, fetched: Part, expected: str | None) -> None:
    """Check a finished transfer's size, zstd stream and hash; a bad one is deleted (it cannot be resumed) and
    raised."""
    if source.size is not None and fetched.size != source.size:
        fetched.restart()
        raise BadTransfer(f"{source.url}: got {fetched.size} bytes, the catalog says {source.size}")
    if damage := fetched.damage():  # else its checksum would be recorded, and the repaired file refused
        fetched.restart()
        raise DamagedShard(damage)
    if expected is not None and fetched.sha256 != expected:
        actual = fetched.sha256
        fetched.restart()
        raise ChecksumMismatch(f"{source.url}: sha256 {actual} does not match the expected {expected}")


class KnownChecksums:
    """sha256 of every source the first time it was fetched (sources without a published checksum are then
    held to it). Shared by download threads and by concurrent pipeline runs: each new entry is merged into
    the file under a lock and saved atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, url: str) -> str | None:
        return self.values.get(url)

    def record(self, url: str, sha256: str) -> None:
        with self.lock, file_lock(self.path.with_name(self.path.name + ".lock")):
            if self.path.exists():
                self.values.update(json.loads(self.path.read_text()))
            if self.values.get(url) == sha256:
                return
            self.values[url] = sha256
            atomic_write_text(self.path, json.dumps(self.values, indent=1, sort_keys=True))


def download_sources(
    sources: list[Source], work_root: str | Path, workers: int = 4, retry: Retry = Retry()
) -> StageResult:
    """Run (or reuse) the download stage for these sources; its output folder holds them by name."""
    if not sources:
        raise ConfigError("no sources to download")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"two sources share a file name: {sorted(n for n in names if names.count(n) > 1)}")
    area, scratch = Path(work_root) / STAGE, scratch_dir(work_root, sources)

    # partial files live under the source set's key, so a rerun resumes them and other source sets never touch them
    def body(run: StageRun) -> None:
        for sub in (".parts", ".cache"):
            (scratch / sub).mkdir(parents=True, exist_ok=True)
        known = KnownChecksums(area / "known_sha256.json")
        total = sum(s.size for s in sources) if all(s.size for s in sources) else None
        with progress(total=total, unit="B", unit_scale=True, desc=f"download {len(sources)} files") as bar:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                files = list(pool.map(lambda s: download_one(s, scratch, known, retry, bar.update), sources))
        for source, (file, sha256) in zip(sources, files, strict=True):
            os.replace(file, run.tmp / source.name)
            run.hashed[source.name] = sha256
        write_splits(run.tmp, {s.name: s.split for s in sources if s.split != "train"})
        run.stats.update(
            files=len(sources),
            bytes=sum((run.tmp / s.name).stat().st_size for s in sources),
            sources={s.name: s.url for s in sources},
        )
        shutil.rmtree(scratch, ignore_errors=True)  # inside the lock: another run may be resuming these parts

    return run_stage(work_root, STAGE, CODE_VERSION, source_set(sources), {}, body)


def scratch_dir(work_root: str | Path, sources: list[Source]) -> Path:
    """Where a download of these sources keeps its partial (`.parts/`) and finished (`.cache/`) files until it
    publishes: one folder per source set, so a rerun resumes there and other source sets never touch it."""
    return Path(work_root) / STAGE / f".work-{stage_key(STAGE, CODE_VERSION, source_set(sources), {})}"


def source_set(sources: list[Source]) -> dict:
    """The download stage's config: what its key hashes (a training source's split is left out, so keys made
    before sources had splits stay the same)."""
    fields = [dataclasses.asdict(s) for s in sources]
    return {"sources": [{k: v for k, v in f.items() if (k, v) != ("split", "train")} for f in fields]}


def sources_for(
    urls: list[str],
    pile_mirror: str | None = None,
    valid: list[str] = (),
    test: list[str] = (),
    retry: Retry = Retry(),
) -> list[Source]:
    """URLs (see `sources_from_strings`): training ones, and validation and test ones; with a mirror, the Pile's
    catalog under it. May be empty. `retry` is for listing folders."""
    named = [
        *sources_from_strings(urls, retry=retry),
        *sources_from_strings(valid, "valid", retry),
        *sources_from_strings(test, "test", retry),
    ]
    return named + (pile_catalog(pile_mirror) if pile_mirror else [])


def sources_from_strings(urls: list[str], split: str = "train", retry: Retry = Retry()) -> list[Source]:
    """Sources from command-line URLs, each optionally suffixed `#sha256=HEX`. A folder (a URL or path ending
    in `/`: local, file:// or s3://) stands for every shard in it at the time of the run, by name, which is
    how a scheduled retrain picks up newly arrived shards."""
    out = []
    for url in urls:
        if url.endswith("/"):
            out += [Source(found, split=split) for found in list_folder(url, retry)]
            continue
        base, marked, fragment = url.partition("#sha256=")
        if urllib.parse.urlparse(base).scheme in ("", "file") and local_path(base).is_dir():
            raise ConfigError(f"source {base} is a folder: end it with / to take every shard in it")
        source = Source(base, sha256=fragment if marked else None, split=split)
        if reason := not_a_shard(source.name):  # later stages would skip it (the tokenizer stage downloads others)
            raise ConfigError(f"source {base}: {reason}")
        out.append(source)
    return out


def list_folder(url: str, retry: Retry = Retry()) -> list[str]:
    """The shard URLs (`*.jsonl.zst`, `*.jsonl`) directly inside a folder URL, sorted by name."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "s3":
        names = call(list_s3, retry, url, url, retry.timeout_s)
    elif parsed.scheme in ("", "file"):
        folder = local_path(url)
        if not folder.is_dir():
            raise MissingInput(f"source folder {folder} does not exist")
        names = [p.name for p in folder_files(folder)]
    else:
        raise ConfigError(f"{url}: only local, file:// and s3:// folders can be listed (end the URL with a file name)")
    refuse_compressed_shards((url + name for name in names), ConfigError)
    shards = sorted(n for n in names if n.endswith(SHARD_SUFFIXES))
    if not shards:
        raise EmptyFolder(f"no shards ({' or '.join(SHARD_SUFFIXES)} files) in the source folder {url}")
    return [url + name for name in shards]
