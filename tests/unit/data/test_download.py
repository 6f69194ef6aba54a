"""The download stage against real servers on loopback: an HTTP server with Range support that can cut a
connection mid-file, and moto's S3 server (real HTTP; boto3 is not patched)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import struct
import threading
import time
from pathlib import Path

import boto3
import pytest
import zstandard

from neox.data.download import (
    ChecksumMismatch,
    Source,
    download_sources,
    pile_catalog,
    scratch_dir,
    sources_from_strings,
)
from neox.data.transports import DownloadError
from neox.errors import ConfigError
from neox.pipeline.stage import verify_output
from neox.runtime.retry import Retry

FAST = Retry(attempts=4, backoff_s=0.01, timeout_s=10, deadline_s=20)


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves `files` by path and honours Range. Faults to play, each used once, in order: `errors[path]`, status
    codes to answer before serving; `cut_after[path]`, byte counts after which a response's connection is closed
    (or reset, with `reset = True`). `delay`: seconds it takes to answer each request."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.errors, self.cut_after, self.reset, self.requests = files, {}, {}, False, []
        self.delay = 0.0  # seconds before each answer
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server: ShardServer = self.server
        data = server.files.get(self.path)
        server.requests.append((self.path, self.headers.get("Range")))
        time.sleep(server.delay)
        if data is None:
            self.send_error(404)
            return
        if server.errors.get(self.path):
            self.send_error(server.errors[self.path].pop(0))
            return
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(data):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cuts = server.cut_after.get(self.path)
        if cuts:
            self.wfile.write(body[: cuts.pop(0)])
            self.wfile.flush()
            if server.reset:  # linger 0: close() sends a TCP RST instead of a FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    files = {"/train/00.jsonl.zst": shard(3_000_000), "/val.jsonl.zst": shard(200_000)}
    srv = ShardServer(files)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shard(size: int) -> bytes:
    """A whole zstd stream of about `size` bytes (random bytes do not compress), as a `.jsonl.zst` source must be."""
    return zstandard.ZstdCompressor(level=1).compress(os.urandom(size))


def test_a_cut_connection_resumes_with_range_and_the_checksum_matches(tmp_path, server):
    data = server.files["/train/00.jsonl.zst"]
    server.cut_after["/train/00.jsonl.zst"] = [1_000_000]
    out = download_sources([Source(f"{server.url}/train/00.jsonl.zst", sha256=sha(data))], tmp_path, retry=FAST).path
    assert (out / "00.jsonl.zst").read_bytes() == data
    ranges = [r for path, r in server.requests if path == "/train/00.jsonl.zst"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) >= 900_000  # resumed
    assert verify_output(out)["files"]["00.jsonl.zst"]["sha256"] == sha(data)


def test_a_download_is_hashed_while_it_arrives_and_read_again_only_to_verify_a_reuse(tmp_path, server, monkeypatch):
    import neox.data.download
    import neox.pipeline.stage

    hashed = []
    for module in (neox.data.download, neox.pipeline.stage):  # our own helper, counted, not replaced
        monkeypatch.setattr(
            module, "sha256_file", lambda path, real=module.sha256_file: hashed.append(path) or real(path)
        )
    server.cut_after["/train/00.jsonl.zst"] = [1_000_000]  # the resumed attempt hashes the first attempt's bytes once
    sources = [Source(f"{server.url}/train/00.jsonl.zst"), Source(f"{server.url}/val.jsonl.zst")]
    out = download_sources(sources, tmp_path, retry=FAST).path
    assert hashed == [] and verify_output(out)["files"]["00.jsonl.zst"]["sha256"] == sha(
        server.files["/train/00.jsonl.zst"]
    )
    hashed.clear()
    assert download_sources(sources, tmp_path, retry=FAST).reused and len(hashed) == 2  # the reuse verifies each file


def test_first_download_records_the_checksum_and_reuse_verifies_it(tmp_path, server):
    url = f"{server.url}/val.jsonl.zst"
    download_sources([Source(url)], tmp_path / "a", retry=FAST)
    known = json.loads((tmp_path / "a" / "download" / "known_sha256.json").read_text())
    assert known[url] == sha(server.files["/val.jsonl.zst"])
    # the mirror's file changes: a later download of the same URL (another stage key) is refused
    server.files["/val.jsonl.zst"] = shard(200_000)
    with pytest.raises(
        ChecksumMismatch,
        match=rf"{url}: sha256 {sha(server.files['/val.jsonl.zst'])} does not match the expected {known[url]}",
    ):
        download_sources([Source(url, name="val-again.jsonl.zst")], tmp_path / "a", retry=FAST)
    parts = scratch_dir(tmp_path / "a", [Source(url, name="val-again.jsonl.zst")]) / ".parts"
    assert parts.is_dir() and not any(parts.iterdir())  # the bad file was deleted


def test_wrong_published_checksum_fails_naming_both_hashes_and_publishes_nothing(tmp_path, server):
    with pytest.raises(ChecksumMismatch, match="does not match the expected 0000") as err:
        download_sources([Source(f"{server.url}/val.jsonl.zst", sha256="0" * 64)], tmp_path, retry=FAST)
    assert sha(server.files["/val.jsonl.zst"]) in str(err.value)
    assert [p.name for p in (tmp_path / "download").iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize(("damage", "says"), [("cut", "truncated zstd stream"), ("garbage", "corrupt zstd data")])
def test_a_shard_cut_short_or_damaged_at_its_source_is_refused_unrecorded_and_taken_once_repaired(
    tmp_path, server, damage, says
):
    url, whole = f"{server.url}/val.jsonl.zst", server.files["/val.jsonl.zst"]
    server.files["/val.jsonl.zst"] = whole[: len(whole) // 2] if damage == "cut" else os.urandom(len(whole))
    with pytest.raises(DownloadError, match=rf"^{re.escape(url)}: {says}.*nothing was published and its checksum"):
        download_sources([Source(url)], tmp_path, retry=FAST)  # at once: fetching it again brings the same bytes
    assert len([r for r in server.requests if r[0] == "/val.jsonl.zst"]) == 1
    # no known_sha256.json: had the damaged file's hash been recorded, the repaired one would be refused
    assert [p.name for p in (tmp_path / "download").iterdir() if not p.name.startswith(".")] == []
    server.files["/val.jsonl.zst"] = whole  # the mirror finishes writing it
    assert (download_sources([Source(url)], tmp_path, retry=FAST).path / "val.jsonl.zst").read_bytes() == whole


def test_missing_file_is_a_permanent_error(tmp_path, server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_sources([Source(f"{server.url}/nope.jsonl.zst")], tmp_path, retry=FAST)


def test_s3_source_through_a_local_moto_server(tmp_path, s3_env):
    data = shard(2_500_000)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="pile")
    s3.put_object(Bucket="pile", Key="shards/00.jsonl.zst", Body=data)
    # a partial file from an interrupted run is resumed with a ranged GET
    sources = [Source("s3://pile/shards/00.jsonl.zst", sha256=sha(data))]
    parts = scratch_dir(tmp_path / "work", sources) / ".parts"
    parts.mkdir(parents=True)
    ident = hashlib.sha256(b"s3://pile/shards/00.jsonl.zst").hexdigest()[:16]
    (parts / f"{ident}.part").write_bytes(data[:1_000_000])
    result = download_sources(sources, tmp_path / "work", retry=FAST).path
    assert (result / "00.jsonl.zst").read_bytes() == data


def test_local_paths_and_file_urls(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl.zst").write_bytes(shard(1000))
    (tmp_path / "src" / "b.jsonl.zst").write_bytes(b := shard(10))
    sources = sources_from_strings(
        [str(tmp_path / "src" / "a.jsonl.zst"), f"file://{tmp_path}/src/b.jsonl.zst#sha256={sha(b)}"]
    )
    out = download_sources(sources, tmp_path / "work").path
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl.zst", "b.jsonl.zst", "manifest.json"]
    assert download_sources(sources, tmp_path / "work").reused


def test_a_published_sha256_is_64_hex_digits_of_either_case_checked_before_anything_downloads(tmp_path):
    (tmp_path / "a.jsonl.zst").write_bytes(data := shard(100))
    url = f"file://{tmp_path}/a.jsonl.zst"
    (source,) = sources_from_strings([f"{url}#sha256={sha(data).upper()}"])  # as some sites publish it
    assert source.sha256 == sha(data)
    assert (download_sources([source], tmp_path / "work").path / "a.jsonl.zst").read_bytes() == data
    for bad in ("xyz", ""):  # an empty one would otherwise turn the check off without a word
        with pytest.raises(ConfigError, match=f"a sha256 is 64 hexadecimal digits, got '{bad}'"):
            sources_from_strings([f"{url}#sha256={bad}"])


def test_a_folder_source_stands_for_the_shards_in_it_at_run_time(tmp_path, s3_env):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for name in ("b.jsonl.zst", "a.jsonl", "notes.txt"):
        (incoming / name).write_bytes(zstandard.compress(name.encode()) if name.endswith(".zst") else name.encode())
    assert [s.name for s in sources_from_strings([f"{incoming}/"])] == ["a.jsonl", "b.jsonl.zst"]
    first = download_sources(sources_from_strings([f"file://{incoming}/"]), tmp_path / "work").path
    (incoming / "c.jsonl.zst").write_bytes(zstandard.compress(b"arrived later"))
    second = download_sources(sources_from_strings([f"file://{incoming}/"]), tmp_path / "work").path
    assert second != first and sorted(p.name for p in second.iterdir()) == [
        "a.jsonl",
        "b.jsonl.zst",
        "c.jsonl.zst",
        "manifest.json",
    ]
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="incoming")
    for key in ("week1/00.jsonl.zst", "week1/01.jsonl.zst", "week1/nested/02.jsonl.zst", "week2/03.jsonl.zst"):
        s3.put_object(Bucket="incoming", Key=key, Body=b"x")
    assert [s.url for s in sources_from_strings(["s3://incoming/week1/"])] == [
        "s3://incoming/week1/00.jsonl.zst",
        "s3://incoming/week1/01.jsonl.zst",
    ]
    with pytest.raises(FileNotFoundError, match="no shards .* in the source folder s3://incoming/none/"):
        sources_from_strings(["s3://incoming/none/"])
    with pytest.raises(FileNotFoundError, match="source folder .*missing does not exist"):
        sources_from_strings([f"{tmp_path}/missing/"])


def _download_in_another_process(url: str, work_root: str, queue) -> None:
    queue.put(str(download_sources(sources_from_strings([url]), work_root).path))


def test_concurrent_runs_with_the_same_sources_take_turns_and_share_one_output(tmp_path):
    import multiprocessing

    (tmp_path / "src").mkdir()
    data = shard(3_000_000)
    (tmp_path / "src" / "a.jsonl.zst").write_bytes(data)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    runs = [
        context.Process(target=_download_in_another_process, args=(f"{tmp_path}/src/", str(tmp_path / "work"), queue))
        for _ in range(3)
    ]
    for run in runs:
        run.start()
    outputs = {queue.get(timeout=60) for _ in runs}
    for run in runs:
        run.join(timeout=60)
    assert [run.exitcode for run in runs] == [0, 0, 0] and len(outputs) == 1
    (out,) = outputs
    assert (Path(out) / "a.jsonl.zst").read_bytes() == data and verify_output(out)
    known = json.loads((tmp_path / "work" / "download" / "known_sha256.json").read_text())
    assert known == {f"{tmp_path}/src/a.jsonl.zst": sha(data)}


@pytest.mark.parametrize("offline_mode", ["1", "0"])
def test_hf_source_without_network_fails_fast_with_instructions(tmp_path, monkeypatch, offline_mode):
    """This machine cannot reach the hub: with HF_HUB_OFFLINE=1 (nothing cached) and without it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", offline_mode)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    started = time.monotonic()
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE=1"):
        download_sources([Source("hf://datasets/EleutherAI/nonexistent-test-set")], tmp_path / "work", retry=FAST)
    assert time.monotonic() - started < 15


def test_pile_catalog_lists_every_shard_under_the_mirror():
    sources = pile_catalog("https://mirror.example/pile/")
    assert len(sources) == 32
    assert (
        sources[0].url == "https://mirror.example/pile/train/00.jsonl.zst" and sources[0].name == "train-00.jsonl.zst"
    )
    assert sources[29].name == "train-29.jsonl.zst" and [s.name for s in sources[30:]] == [
        "val.jsonl.zst",
        "test.jsonl.zst",
    ]
    with pytest.raises(ValueError, match="unsupported source scheme"):
        Source("ftp://x/y")


def test_a_part_hashes_what_it_resumes_from_and_a_file_it_adopts(tmp_path):
    from neox.data.transports import Part

    (tmp_path / "part").write_bytes(b"first half, ")
    part = Part(tmp_path / "part")
    with part.appending() as write:
        write(b"second half")
    assert (part.size, part.sha256) == (23, sha(b"first half, second half"))
    (tmp_path / "generated").write_bytes(b"a shard built elsewhere")
    part.adopt(tmp_path / "generated")  # as a generated hf:// shard is taken whole
    assert (part.size, part.sha256) == (23, sha(b"a shard built elsewhere"))
    assert (tmp_path / "part").read_bytes() == b"a shard built elsewhere" and not (tmp_path / "generated").exists()


# Transient faults: retried within a deadline (neox.runtime.retry)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_or_failing_server_is_asked_again_until_it_answers(tmp_path, server, status):
    server.errors["/val.jsonl.zst"] = [status, status]
    out = download_sources([Source(f"{server.url}/val.jsonl.zst")], tmp_path, retry=FAST).path
    assert (out / "val.jsonl.zst").read_bytes() == server.files["/val.jsonl.zst"]
    assert [path for path, _ in server.requests] == ["/val.jsonl.zst"] * 3


def test_a_server_that_keeps_failing_is_given_up_naming_the_url_and_the_answer(tmp_path, server):
    server.errors["/val.jsonl.zst"] = [503] * 10
    with pytest.raises(DownloadError, match=r"val.jsonl.zst: gave up after 4 failed attempts in a row .*HTTP 503"):
        download_sources([Source(f"{server.url}/val.jsonl.zst")], tmp_path, retry=FAST)
    assert len(server.requests) == 4


def test_a_connection_reset_mid_body_resumes_and_every_reset_that_brings_bytes_is_forgiven(tmp_path, server):
    data = server.files["/train/00.jsonl.zst"]
    server.reset = True
    server.cut_after["/train/00.jsonl.zst"] = [400_000] * 7  # more resets than attempts, each after new bytes
    server.delay = 0.3  # a server that takes a moment to answer
    # if the waits doubled with every attempt rather than every failure since the last byte, by the 5th they would
    # eat the deadline and leave the next attempt too short a timeout for this server
    policy = Retry(attempts=3, backoff_s=0.2, timeout_s=5, deadline_s=1.5)
    out = download_sources([Source(f"{server.url}/train/00.jsonl.zst", sha256=sha(data))], tmp_path, retry=policy)
    assert (out.path / "00.jsonl.zst").read_bytes() == data
    assert len(server.requests) == 8 and all(r is not None for _, r in server.requests[1:])  # each one resumed


@pytest.fixture
def silent_endpoint():
    """A TCP server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_fails_within_the_deadline_not_the_read_timeout(tmp_path, silent_endpoint):
    patient = Retry(backoff_s=0.1, deadline_s=2)  # the default timeout (30 s) is cut short by the deadline
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"{silent_endpoint}/a.jsonl.zst: gave up after nothing arrived for 2 s"):
        download_sources([Source(f"{silent_endpoint}/a.jsonl.zst")], tmp_path, retry=patient)
    assert time.monotonic() - started < 5


def test_an_s3_endpoint_that_never_answers_fails_within_the_deadline(tmp_path, s3_env, silent_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    patient = Retry(attempts=5, backoff_s=0.1, timeout_s=30, deadline_s=2)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="s3://pile/00.jsonl.zst: gave up after nothing arrived for 2 s"):
        download_sources([Source("s3://pile/00.jsonl.zst")], tmp_path, retry=patient)
    assert time.monotonic() - started < 5


def test_an_s3_endpoint_that_refuses_connections_is_retried_then_named(tmp_path, s3_env, monkeypatch):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: every connection is refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match=r"s3://pile/00.jsonl.zst: gave up after 4 failed attempts in a row"):
        download_sources([Source("s3://pile/00.jsonl.zst")], tmp_path, retry=FAST)


def test_s3_without_credentials_is_one_clear_error(tmp_path, s3_env, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="s3://pile/00.jsonl.zst: no AWS credentials found. Set AWS_PROFILE"):
        download_sources([Source("s3://pile/00.jsonl.zst")], tmp_path, retry=FAST)
    with pytest.raises(ConfigError, match="s3://pile/shards/: no AWS credentials found"):
        sources_from_strings(["s3://pile/shards/"])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "not an s3://BUCKET/KEY URL"),
        ("s3://Bad_Bucket!/x.jsonl.zst", "a bucket name is letters, digits, '.', '-' and '_'"),
        ("s3://bucket", "an s3:// source names an object, s3://BUCKET/KEY"),
    ],
)
def test_an_s3_url_botocore_would_refuse_is_refused_in_words_before_any_request(url, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sources_from_strings([url])


def test_a_missing_s3_object_is_a_permanent_error(tmp_path, s3_env):
    boto3.client("s3").create_bucket(Bucket="pile")
    with pytest.raises(FileNotFoundError, match=r"s3://pile/none.jsonl.zst: no such S3 object or bucket \(404\)"):
        download_sources([Source("s3://pile/none.jsonl.zst")], tmp_path, retry=FAST)


def test_a_local_folder_named_without_its_trailing_slash_says_how_to_name_it(tmp_path):
    (tmp_path / "shards").mkdir()
    for url in (str(tmp_path / "shards"), f"file://{tmp_path}/shards"):
        with pytest.raises(ConfigError, match=r"shards is a folder: end it with / to take every shard in it"):
            download_sources(sources_from_strings([url]), tmp_path / "work", retry=FAST)


@pytest.mark.parametrize("name, tool", [("b.jsonl.gz", "gzip"), ("b.json.bz2", "bzip2"), ("b.jsonl.xz", "xz")])
def test_a_source_compressed_other_than_with_zstd_is_refused_with_the_command_that_fixes_it(tmp_path, name, tool):
    (tmp_path / name).write_bytes(b"b")
    fix = f"recompress it with `{tool} -dc {name} | zstd -o b.jsonl.zst`"
    with pytest.raises(ConfigError, match=f"{name} is {tool}-compressed, which is not read .*{re.escape(fix)}"):
        sources_from_strings([str(tmp_path / name)])


def test_a_source_later_stages_would_skip_is_refused_before_anything_downloads(tmp_path):
    (tmp_path / "notes.txt").write_text("{}")
    with pytest.raises(ConfigError, match="notes.txt is not a shard: shards are .jsonl.zst or .jsonl files"):
        sources_from_strings([f"file://{tmp_path}/notes.txt"])
    # in a folder source, JSON lines compressed otherwise are refused; other files are not shards
    (tmp_path / "in").mkdir()
    for name in ("a.jsonl.zst", "meta.json.gz", "notes.txt"):
        (tmp_path / "in" / name).write_bytes(b"a")
    assert [s.name for s in sources_from_strings([f"{tmp_path}/in/"])] == ["a.jsonl.zst"]
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(b"b")
    with pytest.raises(
        ConfigError, match="in/b.jsonl.gz is gzip-compressed.*, and move the original out of the folder"
    ):
        sources_from_strings([f"{tmp_path}/in/"])
