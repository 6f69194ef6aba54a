"""Fault injection (`pytest -m faults`; `make test` runs it too): each data stage and the eval stage, killed with
SIGKILL while it works on its output, publishes nothing, and its rerun clears what the killed one left and
publishes what an undisturbed run does; a full disk (RLIMIT_FSIZE) is one line of error with nothing published;
a Ray worker killed while dedup or tokenize run is replaced and the output is the same."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from neox.cli.app import app
from neox.pipeline.stage import MANIFEST, read_manifest
from tests.conftest import NEOX, REPO

pytestmark = pytest.mark.faults


class TrickleServer(http.server.ThreadingHTTPServer):
    """Serves files slowly (16 KB every 10 ms), so a download can be killed while it writes."""

    def __init__(self, folder: Path):
        self.folder = folder
        super().__init__(("127.0.0.1", 0), _Trickle)


class _Trickle(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        data = (self.server.folder / self.path.lstrip("/")).read_bytes()
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        with contextlib.suppress(ConnectionError):
            for offset in range(start, len(data), 16_384):
                self.wfile.write(data[offset : offset + 16_384])
                time.sleep(0.01)


@pytest.fixture(scope="module")
def source_urls(small_corpus):
    server = TrickleServer(small_corpus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{server.server_address[1]}/{p.name}" for p in sorted(small_corpus.iterdir())]
    server.shutdown()


def stage_args(stage: str, inputs: dict[str, Path], urls: list[str]) -> list[str]:
    """The command line of each stage, from the outputs of the stages before it."""
    return {
        "download": ["download", *urls],
        "dedup": ["dedup", str(inputs.get("download")), "--workers", "2"],
        "tokenizer": ["train-tokenizer", str(inputs.get("dedup")), "--vocab-size", "1024"],
        "tokenize": ["tokenize", str(inputs.get("dedup")), "--tokenizer", f"{inputs.get('tokenizer')}/tokenizer.json"],
        "eval-data": ["eval-data", str(inputs.get("tokenize")), "--split", "80,10,10", "--max-documents", "20"],
        "eval": [
            "eval",
            str(inputs.get("checkpoint")),
            "--eval-data",
            str(inputs.get("eval-data")),
            "--batch-size",
            "8",
            "--mlflow-tracking-uri",
            f"sqlite:///{inputs.get('checkpoint')}/../mlflow.db",
        ],
    }[stage]


STAGES = ("download", "dedup", "tokenizer", "tokenize", "eval-data", "eval")


def untrained_checkpoint(tokenizer: Path, out: Path) -> Path:
    """What the eval stage scores here: an untrained tiny model (the stage does not care how good it is)."""
    from neox.model.checkpoint import init_checkpoint

    init_checkpoint([REPO / "configs" / "model" / "tiny.yml"], out, tokenizer_file=tokenizer / "tokenizer.json")
    return out


def run_in_process(args: list[str], work: Path) -> Path:
    """A `neox` command run in this process (the session's Ray): the stage output it prints last."""
    result = CliRunner().invoke(app, [*args, "--work-root", str(work)])
    assert result.exit_code == 0, (result.output, result.exception)
    printed = Path(result.stdout.strip().splitlines()[-1])
    return printed.parent if printed.is_file() else printed  # train-tokenizer prints its tokenizer.json


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, source_urls, ray_local) -> dict[str, Path]:
    """Every data stage run once without faults: its output by stage."""
    work, outputs = tmp_path_factory.mktemp("undisturbed"), {}
    for stage in STAGES:
        if stage == "eval":
            outputs["checkpoint"] = untrained_checkpoint(outputs["tokenizer"], work / "model")
        outputs[stage] = run_in_process(stage_args(stage, outputs, source_urls), work)
    return outputs


def content(output: Path) -> dict[str, str]:
    """sha256 of every file of a stage output, and its manifest without the timings (of an eval output, its
    metrics: lm-eval's results.json and the manifest say when and where it ran)."""
    if read_manifest(output)["stage"] == "eval":
        return {"metrics.json": (output / "metrics.json").read_text()}
    files = {
        str(p.relative_to(output)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(output.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = read_manifest(output)
    for moment in ("started_at", "seconds"):
        manifest.pop(moment)
    manifest["stats"] = {k: v for k, v in manifest["stats"].items() if "second" not in k and "per_s" not in k}
    return {**files, MANIFEST: repr(sorted(manifest.items()))}


def writing(work: Path, stage: str) -> bool:
    """Whether the stage is at work on its output: a byte in a download's part file, or its temporary output
    folder there (a stage's body writes nowhere else; some write their files only at the end)."""
    area = work / stage
    if stage == "download":
        return any(p.stat().st_size for p in area.glob(".work-*/.parts/*.part"))
    return any(area.glob(".*.tmp-*"))


def leftovers(work: Path, stage: str) -> list[Path]:
    area = work / stage
    return [*area.glob(".*.tmp-*"), *area.glob(".*.old-*"), *area.glob(".work-*")]


def test_a_stage_killed_at_work_publishes_nothing_and_its_rerun_publishes_the_same_bytes(
    tmp_path, undisturbed, source_urls
):
    work, inputs = tmp_path / "work", {}
    for stage in STAGES:
        if stage == "eval":
            inputs["checkpoint"] = untrained_checkpoint(inputs["tokenizer"], work / "model")
        args = stage_args(stage, inputs, source_urls)
        process = subprocess.Popen(
            [NEOX, *args, "--work-root", str(work)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not writing(work, stage):
            assert process.poll() is None, f"{stage} finished before it could be killed"
            time.sleep(0.002)
        os.killpg(process.pid, signal.SIGKILL)  # the command and all it started (its own Ray)
        process.wait()
        area = work / stage
        assert [p for p in area.iterdir() if (p / MANIFEST).exists()] == [], f"{stage}: a killed run published"
        assert leftovers(work, stage), f"{stage}: killed mid-write, yet nothing was left to clear"

        inputs[stage] = run_in_process(args, work)
        assert inputs[stage].name == undisturbed[stage].name  # the same key
        assert content(inputs[stage]) == content(undisturbed[stage]), stage
        assert leftovers(work, stage) == [], stage


def test_a_full_disk_is_one_line_and_publishes_nothing(tmp_path, small_corpus):
    """The file size limit (RLIMIT_FSIZE) stands in for a full disk: a write past it fails with EFBIG."""
    big = tmp_path / "big.jsonl.zst"
    big.write_bytes(os.urandom(2_000_000))

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not the default kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    work = tmp_path / "work"
    result = subprocess.run(
        [NEOX, "download", str(big), "--work-root", str(work)],
        preexec_fn=limited,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: out of disk space (File too large): nothing was published; free space and rerun" in result.stderr
    assert [p for p in (work / "download").iterdir() if (p / MANIFEST).exists()] == []


@pytest.mark.parametrize("stage", ["dedup", "tokenize"])
def test_a_ray_worker_killed_mid_stage_is_replaced_and_the_output_is_the_same(
    tmp_path, undisturbed, source_urls, stage
):
    inputs = {name: undisturbed[name] for name in ("download", "dedup", "tokenizer")}
    result: dict[str, Path] = {}
    runner = threading.Thread(
        target=lambda: result.update(out=run_in_process(stage_args(stage, inputs, source_urls), tmp_path / "work"))
    )
    runner.start()
    killed = None
    while killed is None and runner.is_alive():
        busy = [p for p in psutil.process_iter(["cmdline"]) if task_process(p, stage)]
        if busy:
            killed = busy[0]
            killed.kill()
        time.sleep(0.005)
    runner.join()
    assert killed is not None, f"{stage} finished before a worker could be killed"
    assert content(result["out"]) == content(undisturbed[stage])


WORK_TASKS = {"dedup": "ray::sign_chunk", "tokenize": "ray::tokenize_chunk"}  # the stage's tasks, as Ray names them


def task_process(process: psutil.Process, stage: str) -> bool:
    """A Ray worker process running one of the stage's chunk tasks."""
    return " ".join(process.info["cmdline"] or []).startswith(WORK_TASKS[stage])
