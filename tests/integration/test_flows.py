"""The Prefect flows: `pretrain` end to end on a tiny config (data stages on Ray, a Ray Train worker, lm-eval,
MLflow registry) on Prefect's temporary local API, as `make demo` runs it but on one worker; then, through one
`prefect server` as users with a server run them, a rerun that reuses every verified output, a training failure
after a checkpoint whose rerun resumes and ends where the uninterrupted run ends, a changed dedup threshold that
redoes dedup and what follows (nothing before it), two deployment runs at once by a worker, the retrain and
fine-tune flows."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from neox.data.jsonl import list_shards
from tests.conftest import REPO
from tests.integration.conftest import SPLIT, free_port, wait_for_http

DATA_STAGES = ("download", "dedup", "tokenizer", "tokenize")


def files_state(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file() and "index-cache" not in p.parts
    }


@pytest.fixture(scope="module")
def setting(tmp_path_factory, small_corpus, corpus_tokenizer) -> Iterator[dict]:
    """One work root and MLflow store for the module's flow runs; the environment of a fresh Prefect with its
    temporary API (`local_env`), and the environment of a `prefect server` started here (`env`), which the flow
    runs after the first use: each temporary API costs a run ~17 s to start, a running server nothing."""
    import signal

    root = tmp_path_factory.mktemp("flows")
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    local_env.update(
        PREFECT_HOME=str(root / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(root / "prefect-results"),
        # no local API starts in 1 s (a fresh one migrates its database for 20 s or more): a flow run on it must
        # wait as long as flows.local_api says, not Prefect's 20 s that a loaded CI runner missed
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
    )
    port = free_port()
    env = {**local_env, "PREFECT_HOME": str(root / "prefect-server"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    # started now, it comes up while the first flow run works on its temporary API; run_flow waits for it
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield {
            "root": root,
            "work": root / "work",
            "local_env": local_env,
            "env": env,
            "server": server,
            "shards": [str(p) for p in list_shards(small_corpus)],
            "tokenizer": str(corpus_tokenizer),
        }
    finally:  # the server with everything it started, nothing else
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def served(setting: dict) -> dict:
    """The environment of a flow run through the module's Prefect server, once the server answers."""
    wait_for_http(setting["env"]["PREFECT_API_URL"] + "/health", setting["server"])
    return setting["env"]


def write_config(
    setting: dict,
    name: str,
    threshold: float = 0.8,
    retrain: dict | None = None,
    env: dict | None = None,
    storage: str = "train",
    registry: str = "flow-tiny",
) -> Path:
    """A tiny pretrain config; `storage` is the folder under the work root its training runs live in (a run of
    the same settings in the same folder is the same run, reused)."""
    path = setting["root"] / f"{name}-{threshold}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **({"retrain": retrain} if retrain else {}),
                "work_root": str(setting["work"]),
                "data": {
                    "sources": setting["shards"],
                    "tokenizer": {"from": setting["tokenizer"]},
                    "tokenize": {"prefix": "corpus"},
                    "dedup": {"threshold": threshold},
                },
                "train": {
                    "model": str(REPO / "configs" / "model" / "tiny.yml"),
                    "name": name,
                    "storage_path": str(setting["work"] / storage),
                    "split": SPLIT,
                    "seq_length": 64,
                    "micro_batch_size": 4,
                    "train_iters": 20,
                    "eval_interval": 10,
                    "eval_iters": 1,
                    "checkpoint_interval": 10,
                    "log_interval": 5,
                    # one worker accumulating 2 micro-batches: a second worker costs each of the module's ten
                    # trainings ~20 CPU-s, and data parallelism is test_train's (the LoRA fine-tune keeps two)
                    "num_workers": 1,
                    "gradient_accumulation_steps": 2,
                    "mlflow_tracking_uri": f"sqlite:///{setting['root'] / 'mlflow.db'}",
                    **({"env": env} if env else {}),
                },
                "eval": {"batch_size": 8, "data": {"max_documents": 8, "lastword_chars": 300}},
                "registry": {"name": registry},
            }
        )
    )
    return path


def run_labelled(storage: Path, label: str) -> Path:
    """The one training run of this label under a storage folder (runs live in folders named by their key)."""
    from neox.train.runs import list_runs

    (run,) = [r for r in list_runs(str(storage)) if r.label == label]
    return Path(run.location)


def run_flow(setting: dict, code: str, config: Path, ok: bool = True, local_api: bool = False) -> str:
    """Run a flow as `python -c` does, through the module's Prefect server, or on a temporary API of its own."""
    done = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        cwd=REPO,
        env=setting["local_env"] if local_api else served(setting),
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout + done.stderr
    assert (done.returncode == 0) == ok, out[-5000:]
    return out


PRETRAIN = "import sys; from flows.pretrain import main; main()"


@pytest.fixture(scope="module")
def uninterrupted(setting) -> str:
    out = run_flow(setting, PRETRAIN, write_config(setting, "straight"), local_api=True)  # as `make demo` does
    assert "Finished in state Completed()" in out and "flow-tiny version 1 is `champion`" in out
    return out


def test_pretrain_flow_runs_end_to_end_and_a_rerun_reuses_every_stage(setting, uninterrupted):
    from mlflow import MlflowClient

    from neox.pipeline.stage import read_manifest, sha256_file

    work = setting["work"]
    assert "neox_heldout/bits_per_byte" in uninterrupted
    tags = (
        MlflowClient(tracking_uri=f"sqlite:///{setting['root'] / 'mlflow.db'}").get_model_version("flow-tiny", "1").tags
    )
    (dedup,) = [d for d in (work / "dedup").iterdir() if (d / "manifest.json").exists()]
    download = work / "download" / read_manifest(dedup)["inputs"]["shards"]  # the corpus, not the fetched tokenizer
    assert tags["neox.corpus_manifest_sha256"] == sha256_file(download / "manifest.json")
    assert tags["neox.dedup_manifest_sha256"] == sha256_file(dedup / "manifest.json")
    assert len(tags["neox.prefect_flow_run_id"]) == 36  # a UUID
    for stage in (*DATA_STAGES, "eval-data", "eval"):
        assert any((work / stage).iterdir()), stage
    before = files_state(work)
    again = run_flow(setting, PRETRAIN, write_config(setting, "straight"))
    for stage in (*DATA_STAGES, "eval"):
        assert f"{stage}: reused the verified output" in again, stage
    for task in ("download", "dedup", "train-tokenizer", "tokenize", "evaluate"):  # shown as Cached in Prefect
        assert re.search(rf"Task run '{task}-\w+' - Finished in state Cached\(", again), task
        assert not re.search(rf"Task run '{task}-\w+' - Finished in state Cached\(", uninterrupted), task
    assert "train: reused" in again and "flow-tiny version 1 is `champion` (already champion)" in again
    assert files_state(work) == before  # same files, same bytes, same mtimes


def check_console(out: str, logged_steps: int) -> None:
    """A flow's console: no line said over twice, no library warnings, noise or bars, and each of the training's
    `logged_steps` lines once (Ray Train's print patch printed each twice; rank 0 alone prints them)."""
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert not {line: n for line, n in Counter(lines).items() if n > 2}
    assert "Failed to query Ray Train Controller" not in out  # Ray's State API noise, ~50 lines before
    assert not re.search(r"Warning\b|\[WARNING\]|WARNING mlflow|core_worker\.cc", out)
    # the libraries' bars (datasets, lm-eval, MLflow downloads) are off in a log; ours are plain ASCII lines
    assert "█" not in out and not re.search(r"Generating \w+ split|Downloading artifacts", out)
    assert "Validating input example" not in out
    steps = [line for line in lines if re.search(r"step +\d+ train/loss=", line)]
    assert len(steps) == len(set(steps)) == logged_steps, steps


def test_the_console_says_each_thing_once_without_warnings_and_prefect_shows_training_progress(setting, uninterrupted):
    check_console(uninterrupted, logged_steps=4)  # 20 steps, logged every 5
    assert uninterrupted.rindex("train/loss=") < uninterrupted.index("== neox-pipeline: pretrain")  # before the summary
    assert re.search(r"training: loss [\d.]+ at step 5 -> [\d.]+ at step 20, each the mean", uninterrupted)
    assert re.search(r"reading: a [\d.]+M-parameter model after 20 steps .* bits per byte on held-out", uninterrupted)

    # the latest artifact of each key, read back from the Prefect database the flow wrote
    shown = subprocess.run(
        [sys.executable, "-c", LATEST_ARTIFACTS],
        cwd=REPO,
        env=setting["local_env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    artifacts = json.loads(shown.stdout)
    assert artifacts["train-progress"] == 100
    image = artifacts["train-loss-curve"]
    assert image.startswith("data:image/png;base64,")
    assert base64.b64decode(image.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


LATEST_ARTIFACTS = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter as Filter, ArtifactCollectionFilterKey as Key
from flows.local_api import patient_local_api
with patient_local_api(), get_client(sync_client=True) as client:
    keys = ["train-progress", "train-loss-curve"]
    found = client.read_latest_artifacts(artifact_filter=Filter(key=Key(any_=keys)))
    print(json.dumps({a.key: a.data for a in found}))
"""


def test_a_failed_training_stage_resumes_on_rerun_and_ends_like_an_uninterrupted_run(setting, uninterrupted):
    work = setting["work"]
    # the fault is asked for through train.env, which only the training workers' environment gets
    # its own storage folder: with the uninterrupted run's settings in its folder it would be that run, reused
    faulty = write_config(setting, "interrupted", env={"NEOX_FAIL_AFTER_CHECKPOINT": 10}, storage="train-interrupted")
    failed = run_flow(setting, PRETRAIN, faulty, ok=False)
    assert "failing on purpose after the step-10 checkpoint" in failed and "Finished in state Failed" in failed
    config = write_config(setting, "interrupted", storage="train-interrupted")  # env is run control: the same run
    upstream = {stage: files_state(work / stage) for stage in DATA_STAGES}

    resumed = run_flow(setting, PRETRAIN, config)
    assert "train: resumed" in resumed and "resumed from the step-10 checkpoint" in resumed
    assert {stage: files_state(work / stage) for stage in DATA_STAGES} == upstream
    straight, interrupted = (
        run_labelled(work / "train", "straight"),
        run_labelled(work / "train-interrupted", "interrupted"),
    )
    assert (interrupted / "final" / "model" / "model.safetensors").read_bytes() == (
        straight / "final" / "model" / "model.safetensors"
    ).read_bytes()
    losses = [
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (straight, interrupted)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 20
    # the same weights are the same evaluation, hence the same registered version
    assert "flow-tiny version 1 is `champion` (already champion)" in resumed


def test_a_new_dedup_threshold_redoes_dedup_and_everything_after_it_only(setting, uninterrupted):
    """Through the whole pretrain flow: a new dataset is a new training run (its key holds the dataset's), then a
    new evaluation and a new registered version."""
    work = setting["work"]
    before = {stage: files_state(work / stage) for stage in DATA_STAGES}
    first_run = run_labelled(work / "train", "straight")
    first_files = files_state(first_run)
    # its own label and registered model only to keep the other tests' lookups simple: neither changes the run key
    config = write_config(setting, "dedup-0.6", threshold=0.6, registry="flow-dedup")
    out = run_flow(setting, PRETRAIN, config)
    assert "download: reused" in out and "tokenizer: reused" in out
    assert "dedup: wrote" in out and "tokenize: wrote" in out and "train: trained" in out and "eval: wrote" in out
    assert "flow-dedup version 1" in out
    assert files_state(first_run) == first_files  # a new run beside the first, which stays byte for byte as it was
    assert (
        json.loads((run_labelled(work / "train", "dedup-0.6") / "data.json").read_text())["data"]
        != (json.loads((first_run / "data.json").read_text())["data"])
    )
    after = {stage: files_state(work / stage) for stage in DATA_STAGES}
    for stage in DATA_STAGES:  # nothing already there is touched; dedup and tokenize gain one output each
        assert set(before[stage].items()) <= set(after[stage].items()), stage
    assert len({Path(f).parts[0] for f in after["dedup"]}) == len({Path(f).parts[0] for f in before["dedup"]}) + 1
    assert len({Path(f).parts[0] for f in after["tokenize"]}) == len({Path(f).parts[0] for f in before["tokenize"]}) + 1
    assert after["download"] == before["download"] and after["tokenizer"] == before["tokenizer"]

    (work / "train" / "tiny-local" / "checkpoint_000001").mkdir(parents=True)  # a run from before runs were keyed
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("neox")), "runs", str(config)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    rows = {line.split()[1]: line.split() for line in listed[1:]}
    assert rows["straight"][2] == rows["dedup-0.6"][2] == "finished" and rows["straight"][3] == "20/20"
    assert rows["straight"][5] == str(first_run / "final" / "model") and rows["tiny-local"][2] == "legacy"


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint on loopback: keeps the bodies POSTed to it."""

    bodies: list[str] = []

    def do_POST(self):
        Receiver.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


# the deployment's two runs at once: one with the uninterrupted run's settings, one with another dedup threshold
CONCURRENT = (("conc-a", 0.8), ("conc-b", 0.6))


def test_two_deployment_runs_at_once_through_a_prefect_server_and_worker_keep_to_their_own_outputs(
    setting, uninterrupted
):
    """prefect.yaml as the README tells users to use it, and how it tells them to run flows at once: a real
    `prefect server` on a free loopback port (the module's), a process work pool, `prefect deploy --all`, a worker,
    and two runs of the pretrain deployment triggered together with different configs on an empty work root,
    sharing the sources and the MLflow store: the shared stages (download, tokenizer) are computed once and used
    by both, each run gets its own dedup, tokenize, training run and registered model, every output verifies,
    and the run with the uninterrupted run's settings ends with its very weights. Then a failing run notifies."""
    import signal

    from mlflow import MlflowClient

    from neox.pipeline.stage import MANIFEST, verify_output

    prefect = str(Path(sys.executable).with_name("prefect"))
    env = {**served(setting), "NEOX_PIPELINE_DIR": str(REPO)}
    worker, watches = None, {}
    worker_log = setting["root"] / "worker.log"
    try:

        def prefect_cli(*args: str, timeout: float = 120) -> str:
            done = subprocess.run([prefect, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
            return done.stdout

        prefect_cli("work-pool", "create", "neox-local", "--type", "process")
        deployed = prefect_cli("--no-prompt", "deploy", "--all")
        assert "pretrain/pretrain" in deployed and "evaluate_and_promote/evaluate-and-promote" in deployed
        assert "finetune/finetune" in deployed
        retrain = prefect_cli("deployment", "inspect", "retrain/scheduled-retrain")
        assert "0 3 * * 1" in retrain  # the weekly cron
        assert re.search(r"'global_concurrency_limit': \{[^}]*'limit': 1\b", retrain), retrain  # never two at once
        with worker_log.open("w") as log:
            worker = subprocess.Popen(
                [prefect, "worker", "start", "--pool", "neox-local"],
                cwd=REPO,
                env=env,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        shared = {**setting, "work": setting["root"] / "concurrent"}
        configs = {name: write_config(shared, name, threshold, registry=name) for name, threshold in CONCURRENT}
        watches = {
            name: subprocess.Popen(
                [prefect, "deployment", "run", "pretrain/pretrain", "--params", json.dumps({"config": str(path)})]
                + ["--watch", "--watch-timeout", "800"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, path in configs.items()
        }
        spans = {}
        for name, watch in watches.items():
            out = watch.communicate(timeout=900)[0]
            assert "Completed" in out, f"{name}: {out[-2000:]}\nworker: {worker_log.read_text()[-5000:]}"
            flow_run = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
            with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run}", timeout=30) as answer:
                state = json.loads(answer.read())
            spans[name] = (datetime.fromisoformat(state["start_time"]), datetime.fromisoformat(state["end_time"]))
        assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values()), spans  # at once
        client = MlflowClient(tracking_uri=f"sqlite:///{setting['root'] / 'mlflow.db'}")
        for name in configs:  # their own registered models: a shared one would race for champion by design
            assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

        work = shared["work"]
        outputs = {
            stage: sorted(p for p in (work / stage).iterdir() if (p / MANIFEST).exists())
            for stage in (*DATA_STAGES, "eval")
        }
        assert {stage: len(found) for stage, found in outputs.items()} == {
            "download": 2,
            "dedup": 2,
            "tokenizer": 1,
            "tokenize": 2,
            "eval": 2,
        }
        for found in outputs.values():  # (download: the corpus and the fetched tokenizer file)
            for output in found:
                verify_output(output)
        assert not [p for p in work.rglob(".*.tmp-*")]  # no half-published output left behind
        runs = {name: run_labelled(work / "train", name) for name in configs}
        data = {name: json.loads((runs[name] / "data.json").read_text())["data"] for name in configs}
        assert data["conc-a"] != data["conc-b"] and {Path(d).parent.name for d in data.values()} == {"tokenize"}
        assert (runs["conc-a"] / "final" / "model" / "model.safetensors").read_bytes() == (
            run_labelled(setting["work"] / "train", "straight") / "final" / "model" / "model.safetensors"
        ).read_bytes()

        # the failure notification: flows.notify's automation POSTs to a webhook when a flow run fails
        hook = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
        notify = subprocess.run(
            [sys.executable, "-m", "flows.notify", url], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert notify.returncode == 0, notify.stderr[-2000:]
        missing = json.dumps({"config": str(setting["root"] / "missing.yaml")})
        run = [
            prefect,
            "deployment",
            "run",
            "pretrain/pretrain",
            "--params",
            missing,
            "--watch",
            "--watch-timeout",
            "300",
        ]
        failed = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert "Failed" in failed.stdout + failed.stderr
        deadline = time.monotonic() + 90
        while not Receiver.bodies and time.monotonic() < deadline:
            time.sleep(1)
        (body,) = Receiver.bodies
        assert "neox-pipeline: flow run pretrain" in body and "of pretrain failed" in body
        hook.shutdown()
        prefect_cli("--no-prompt", "automation", "delete", "--all")  # later failing runs have no one to tell
    finally:
        for watch in watches.values():  # a run that outlived its watch is stopped with the worker below
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        if worker:  # the worker with everything it started, nothing else
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


RETRAIN = "import sys; from flows.retrain import main; main()"


def test_retrain_continues_the_champion_on_newly_arrived_shards_only(setting, uninterrupted, sample_corpus):
    """The scheduled retrain: nothing arrived → nothing trained; a new shard → the champion's weights go on
    training on it alone, the candidate and the champion are scored on its held-out documents, the gate
    decides; the same retrain again has nothing new (or reuses its run)."""
    from mlflow import MlflowClient

    from neox.data.jsonl import Rejects, read_shard, write_shard

    incoming = setting["root"] / "incoming"
    incoming.mkdir()
    config = write_config(
        setting,
        "straight",
        retrain={
            "mode": "continue",
            "data": {"sources": [f"{incoming}/"]},
            "train": {"train_iters": 10, "lr": 3.0e-4, "warmup": 0.0},
        },
    )
    assert "retrain skipped (no new shards since champion v1)" in run_flow(setting, RETRAIN, config)

    docs = [d for d in read_shard(list_shards(sample_corpus)[0], Rejects())][300:450]  # never in the small corpus
    write_shard(incoming / "week-1.jsonl.zst", ({"text": d.text, "meta": d.meta} for d in docs))
    out = run_flow(setting, RETRAIN, config)
    assert "continued from champion version 1" in out and "flow-tiny version 2" in out
    from neox.train.runs import list_runs

    (run,) = [Path(r.location) for r in list_runs(str(setting["work"] / "train")) if r.label.startswith("straight-v1-")]
    straight = run_labelled(setting["work"] / "train", "straight")
    fresh, continued = (
        [json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (straight, run)
    )
    # it starts from the champion's 20 steps of training (7.2 here), not from a fresh init's ~ln(vocab) (7.8)
    assert len(continued) == 10 and continued[0] < fresh[0] - 0.4

    client = MlflowClient(tracking_uri=f"sqlite:///{setting['root'] / 'mlflow.db'}")
    v1, v2 = (client.get_model_version("flow-tiny", v) for v in ("1", "2"))
    decision = json.loads(v2.tags["neox.promotion"])
    assert str(decision["champion_version"]) == "1" and decision["champion_scored_on"] == "the candidate's eval data"
    assert v2.description.startswith("### flow-tiny version 2: ") and "| metric | this version | champion (v1) |" in (
        v2.description
    )
    assert "No champion yet" in v1.description
    # the champion was scored again on the new held-out documents, not compared through its old numbers
    assert decision["champion_metrics"] != client.get_run(v1.run_id).data.metrics
    train_run = client.get_run(v2.tags["neox.train_run_id"])
    assert train_run.data.params["train.init_from"] == str(straight / "final" / "model")

    again = run_flow(setting, RETRAIN, config)
    if decision["promoted"]:  # v2 trained on week-1: nothing is new for it
        assert "retrain skipped (no new shards since champion v2)" in again
    else:  # v1 is still champion: the same run and version, reused
        assert "train: reused" in again and "flow-tiny version 2" in again


FINETUNE = "import sys; from flows.finetune import main; main()"


def test_finetune_flow_trains_lora_on_instructions_beats_its_base_and_registers_with_lineage(setting, uninterrupted):
    """Version 1 of the pretrained model, fine-tuned with LoRA on the embedded instruction set: the prompt tokens
    unscored, the response loss on held-out examples below the base's, a version of its own registered model
    tagged with its base, promoted because it beats the base (there is no fine-tune champion yet)."""
    from mlflow import MlflowClient

    config = setting["root"] / "finetune.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "work_root": str(setting["work"]),
                "finetune": {"base": "models:/flow-tiny/1", "instructions": {"corpus": "sample"}},
                "train": {
                    "model": str(REPO / "configs" / "model" / "tiny.yml"),
                    "name": "sft",
                    "storage_path": str(setting["work"] / "train"),
                    "split": "90,5,5",
                    "seq_length": 64,
                    "micro_batch_size": 8,
                    "train_iters": 40,
                    "lr": 3.0e-3,
                    "warmup": 0.05,
                    "eval_interval": 20,
                    "eval_iters": 1,
                    "checkpoint_interval": 20,
                    "log_interval": 10,
                    "num_workers": 2,
                    "lora": {"r": 8, "alpha": 16.0},
                    "mlflow_tracking_uri": f"sqlite:///{setting['root'] / 'mlflow.db'}",
                },
                "eval": {"tasks": ["neox_response"], "batch_size": 16, "data": {"max_documents": 24}},
                "registry": {
                    "name": "flow-tiny-sft",
                    "rule": {"metric": "neox_response/bits_per_byte", "direction": "minimize"},
                },
            }
        )
    )
    out = run_flow(setting, FINETUNE, config)
    assert "fine-tuned from models:/flow-tiny/1" in out and "flow-tiny-sft version 1 is `champion`" in out
    check_console(out, logged_steps=4)  # the module's one flow with two workers: 40 steps, logged every 10
    assert "the base model on the same held-out data:" in out and "Hugging Face export: max |logit difference|" in out

    client = MlflowClient(tracking_uri=f"sqlite:///{setting['root'] / 'mlflow.db'}")
    version = client.get_model_version("flow-tiny-sft", "1")
    base_checkpoint = run_labelled(setting["work"] / "train", "straight") / "final" / "model"
    assert version.tags["neox.base_model"] == "models:/flow-tiny/1"
    assert version.tags["neox.base_checkpoint"] == str(base_checkpoint)
    decision = json.loads(version.tags["neox.promotion"])
    assert decision["baseline"] == "the base model models:/flow-tiny/1" and decision["champion_version"] is None
    tuned, base = (
        m["neox_response/bits_per_byte"] for m in (decision["candidate_metrics"], decision["champion_metrics"])
    )
    assert tuned < base - 0.1, (tuned, base)  # the response loss fell
    train_run = client.get_run(version.tags["neox.train_run_id"])
    assert train_run.data.params["train.init_from"] == str(base_checkpoint)
    # the merged export is a plain GPT-NeoX with the chat template; a rerun reuses everything
    hf = run_labelled(setting["work"] / "train", "sft") / "final" / "hf"
    assert "<|assistant|>" in json.loads((hf / "tokenizer_config.json").read_text())["chat_template"]
    # served, a question becomes a user turn rendered with the model's chat template (chat: false sends it as is)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{setting['root'] / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/flow-tiny-sft/1")
    questions = ["What does the Python function `json.dumps` do?", "def main():"]
    rendered = [f"<|user|>\n{question}\n<|assistant|>\n" for question in questions]
    sampling = {"max_new_tokens": 12, "temperature": 1.0, "seed": 1}
    answers = served.predict(questions, params=sampling)
    assert answers == served.predict(rendered, params={**sampling, "chat": False})
    # and chat: false sends the bare question, which samples otherwise under some seed (a tiny model's samples can
    # coincide under one seed: its next-token choices barely depend on the prompt)
    assert any(
        served.predict(questions, params={**sampling, "seed": seed})
        != served.predict(questions, params={**sampling, "seed": seed, "chat": False})
        for seed in range(1, 6)
    )
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/flow-tiny-sft/1")).read_text()
    assert "transformers==" in requirements and "Jinja2==" in requirements  # what rendering the template needs
    # its checkpoints keep the adapters apart: reshard says to finish the run instead of writing unmerged weights
    refused = subprocess.run(
        [
            str(Path(sys.executable).with_name("neox")),
            "reshard",
            str(run_labelled(setting["work"] / "train", "sft")),
            "--out",
            str(setting["root"] / "resharded"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "checkpoint of a LoRA run" in refused.stderr
    again = run_flow(setting, FINETUNE, config)
    assert "instructions: reused the verified output" in again and "train: reused" in again
    assert "flow-tiny-sft version 1 is `champion` (already champion)" in again


def test_a_flow_stopped_by_bad_input_ends_with_one_error_line(setting, uninterrupted):
    """A chat template that scores no token passes the config check but not the instructions stage: the flow
    fails with the stage's message on one `error:` line and exit 2, as a `neox` command does (Prefect's log above
    it keeps the task's traceback)."""
    template = setting["root"] / "silent.jinja"
    template.write_text("")
    config = setting["root"] / "finetune-silent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "work_root": str(setting["work"]),
                "finetune": {
                    "base": "models:/flow-tiny/1",
                    "instructions": {"corpus": "sample", "chat_template": str(template)},
                },
                "train": {
                    "model": str(REPO / "configs" / "model" / "tiny.yml"),
                    "name": "silent",
                    "storage_path": str(setting["work"] / "train"),
                    "seq_length": 64,
                    "mlflow_tracking_uri": f"sqlite:///{setting['root'] / 'mlflow.db'}",
                },
                "registry": {"name": "flow-tiny-silent"},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", FINETUNE, str(config)],
        cwd=REPO,
        env=served(setting),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no token of the" in errors[0] and "is scored" in errors[0]
    assert "Traceback" not in done.stderr.rsplit("Finished in state Failed", 1)[1]  # only in Prefect's log above


def test_finetune_without_instructions_continues_pretraining_on_the_data_sections_shards(setting, uninterrupted):
    """No finetune.instructions: the data section's stages (reused here) and training from the base's weights,
    evaluated on the held-out documents beside the base, registered with lineage to it."""
    from mlflow import MlflowClient

    raw = yaml.safe_load(write_config(setting, "continued", registry="flow-tiny-continued").read_text())
    raw["finetune"] = {"base": "models:/flow-tiny/1"}
    raw["train"].update(train_iters=10, warmup=0.0, lr=3.0e-4)
    config = setting["root"] / "continued.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = run_flow(setting, FINETUNE, config)
    assert "dedup: reused the verified output" in out and "tokenize: reused the verified output" in out
    assert "fine-tuned from models:/flow-tiny/1" in out and "the base model on the same held-out data:" in out

    client = MlflowClient(tracking_uri=f"sqlite:///{setting['root'] / 'mlflow.db'}")
    version = client.get_model_version("flow-tiny-continued", "1")
    straight = run_labelled(setting["work"] / "train", "straight")
    assert version.tags["neox.base_model"] == "models:/flow-tiny/1"
    assert client.get_run(version.tags["neox.train_run_id"]).data.params["train.init_from"] == str(
        straight / "final" / "model"
    )
    decision = json.loads(version.tags["neox.promotion"])
    assert decision["baseline"] == "the base model models:/flow-tiny/1"
    assert "neox_heldout/bits_per_byte" in decision["champion_metrics"]  # the base, scored on the same documents
    continued = run_labelled(setting["work"] / "train", "continued")
    first, base_first = (
        json.loads((r / "metrics.jsonl").read_text().splitlines()[0])["loss"] for r in (continued, straight)
    )
    assert first < base_first - 0.4  # it starts from the base's training, not from a fresh init
