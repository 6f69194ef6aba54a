"""How a source's bytes arrive: one function per URL scheme (http/https, s3, file or a local path, hf://datasets)
that appends the bytes from the part's current size on to a `Part`, calling `progress(n)` per chunk, within
`timeout` seconds to connect and per read. A fault worth retrying is raised as it is (see `neox.runtime.retry`), any
other as a one-line error. The download stage (`neox.data.download`) resumes, retries and verifies around them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from neox.data.jsonl import CorruptShardError, ZstdFrames
from neox.errors import ConfigError, MissingInput, ServiceError
from neox.runtime.retry import TransientError, is_transient

CHUNK = 1 << 20
HTTP_CHUNK = 1 << 16


class DownloadError(ServiceError):
    """A source that could not be fetched intact after every retry."""


class Part:
    """A download's part file, hashed as it is written, so that checking and publishing it read no byte again (a
    resumed part hashes what an earlier attempt left, once). With `zstd_source` (a `.zst` shard's URL) its bytes
    are also decompressed as they come, and thrown away, so that a shard cut short or damaged at its source is
    found (`damage`) before its checksum is trusted."""

    def __init__(self, path: Path, zstd_source: str | None = None):
        self.path, self.zstd_source = path, zstd_source
        self._start()
        if path.exists():
            self._hash_what_is_there()

    def _start(self) -> None:
        self._digest, self.size, self._damage = hashlib.sha256(), 0, None
        hint = "the source's file is cut short or damaged: nothing was published and its checksum was not recorded"
        self._frames = ZstdFrames(self.zstd_source, hint) if self.zstd_source else None

    def _take(self, data: bytes) -> None:
        self._digest.update(data)
        self.size += len(data)
        if self._frames is not None and self._damage is None:
            try:
                for _ in self._frames.feed(data):
                    pass
            except CorruptShardError as err:
                self._damage = str(err)

    def damage(self) -> str | None:
        """Why the bytes so far are not a whole zstd stream; None when they are, or no stream is followed."""
        if self._damage is None and self._frames is not None:
            try:
                self._frames.finish()
            except CorruptShardError as err:
                return str(err)
        return self._damage

    def _hash_what_is_there(self) -> None:
        with open(self.path, "rb") as existing:
            while block := existing.read(CHUNK):
                self._take(block)

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[bytes], None]]:
        """A function that appends bytes to the part (and its hash)."""
        with open(self.path, "ab") as out:

            def write(data: bytes) -> None:
                out.write(data)
                self._take(data)

            yield write

    def restart(self) -> None:
        """Empty the part: what it holds cannot be resumed from."""
        self.path.unlink(missing_ok=True)
        self._start()

    def adopt(self, whole: Path) -> None:
        """Make a complete file written elsewhere the part (read once, to hash it)."""
        self.restart()
        os.replace(whole, self.path)
        self._hash_what_is_there()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def _fetch_http(url: str, part: Part, timeout: float, progress: Callable[[int], None]) -> None:
    import requests

    offset = part.size
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416:  # nothing left: the part is already complete
            return
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"{url}: HTTP {response.status_code} {response.reason}")
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
        if offset and response.status_code == 200:  # server ignored Range: start over
            part.restart()
        expected = response.headers.get("Content-Length")
        received = 0
        with part.appending() as write:
            # small reads: when a connection breaks, urllib3 drops the chunk in progress
            for chunk in response.iter_content(HTTP_CHUNK):
                write(chunk)
                received += len(chunk)
                progress(len(chunk))
        if expected is not None and received != int(expected):
            raise ConnectionError(f"{url}: connection closed after {received} of {expected} bytes")


def s3_client(timeout: float):
    import boto3
    from botocore.config import Config

    # botocore's own retries off: ours resume a transfer cut mid-body, which a retried GetObject call cannot.
    # A session of its own: boto3's default one is not thread-safe, and keeps the credentials it first found.
    return boto3.session.Session().client(
        "s3", config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
    )


@contextlib.contextmanager
def s3_errors(url: str) -> Iterator[None]:
    """S3's permanent faults as one-line errors; transient ones pass through to be retried."""
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise ConfigError(
            f"{url}: no AWS credentials found. Set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "run where an instance role provides them."
        ) from None
    except botocore.exceptions.ClientError as err:
        if is_transient(err):
            raise
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise MissingInput(f"{url}: no such S3 object or bucket ({code})") from None
        message = err.response.get("Error", {}).get("Message", "")
        raise DownloadError(f"{url}: S3 refused the request ({code}: {message})") from None


def _fetch_s3(url: str, part: Part, timeout: float, progress: Callable[[int], None]) -> None:
    bucket, key = s3_bucket_key(url)
    client = s3_client(timeout)
    with s3_errors(url):
        size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if part.size >= size:
            return
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={part.size}-")["Body"]
        with part.appending() as write:
            for chunk in body.iter_chunks(CHUNK):
                write(chunk)
                progress(len(chunk))


def list_s3(url: str, timeout: float) -> list[str]:
    """The names of the objects directly under an s3:// folder URL."""
    bucket, prefix = s3_bucket_key(url)
    with s3_errors(url):
        listing = s3_client(timeout).get_paginator("list_objects_v2")
        pages = listing.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        return [obj["Key"].rsplit("/", 1)[-1] for page in pages for obj in page.get("Contents", [])]


def s3_bucket_key(url: str) -> tuple[str, str]:
    """(bucket, key or folder prefix) of an s3:// URL; one that botocore would refuse is refused here, in words."""
    parsed = urllib.parse.urlparse(url)
    if re.fullmatch(r"[a-zA-Z0-9._-]{1,255}", parsed.netloc) is None:  # botocore's own rule, older buckets' too
        raise ConfigError(f"{url}: not an s3://BUCKET/KEY URL (a bucket name is letters, digits, '.', '-' and '_')")
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(url: str) -> Path:
    """The file a file:// URL or a plain path names."""
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)) if url.startswith("file:") else Path(url)


def _fetch_file(url: str, part: Part, timeout: float, progress: Callable[[int], None]) -> None:
    path = local_path(url)
    if path.is_dir():
        raise ConfigError(f"source {url} is a folder: end it with / to take every shard in it")
    if not path.is_file():
        raise MissingInput(f"source file {path} does not exist")
    with open(path, "rb") as src, part.appending() as write:
        src.seek(part.size)
        while chunk := src.read(CHUNK):
            write(chunk)
            progress(len(chunk))


def _fetch_hf(url: str, part: Part, timeout: float, progress: Callable[[int], None]) -> None:
    """A Hugging Face dataset as one Pile-format shard (needs the hub, or its local cache)."""
    from neox.data.jsonl import write_shard

    parsed = urllib.parse.urlparse(url)
    repo = parsed.path.strip("/") if parsed.netloc == "datasets" else None
    if not repo:
        raise ConfigError(f"{url}: expected hf://datasets/ORG/NAME[?split=train&config=NAME&text=FIELD]")
    query = dict(urllib.parse.parse_qsl(parsed.query))
    import datasets
    from huggingface_hub import constants

    hint = (
        "Without network access, pre-cache it on a connected machine (HF_DATASETS_CACHE=DIR) and set "
        "HF_HUB_OFFLINE=1 here, or download its files and give a file:// or local path instead."
    )
    from neox.runtime.network import reachable

    if not constants.HF_HUB_OFFLINE and not reachable(constants.ENDPOINT):
        # fail in seconds rather than after the hub client's own retries
        raise DownloadError(f"{url}: the Hugging Face hub ({constants.ENDPOINT}) is not reachable. {hint}")
    try:
        dataset = datasets.load_dataset(repo, query.get("config"), split=query.get("split", "train"))
    except Exception as err:  # datasets raises many types for "cannot reach the hub"
        if is_transient(err) and not constants.HF_HUB_OFFLINE:  # offline, "cannot connect" is not going away
            raise
        raise DownloadError(
            f"{url}: could not load Hugging Face dataset {repo!r} ({type(err).__name__}: {err}). {hint}"
        ) from None
    field = query.get("text", "text")
    tmp = part.path.with_name(part.path.name + ".jsonl.zst")
    write_shard(tmp, ({"text": row[field], "meta": {"pile_set_name": repo}} for row in dataset))
    part.adopt(tmp)  # a generated shard is rebuilt whole, not resumed
    progress(part.size)


TRANSPORTS = {
    "http": _fetch_http,
    "https": _fetch_http,
    "s3": _fetch_s3,
    "file": _fetch_file,
    "": _fetch_file,
    "hf": _fetch_hf,
}
