"""Training with real Ray Train + DeepSpeed on the CPU: ZeRO stages, exact resume after SIGKILL of the
trainer, a killed worker recovered by Ray Train from checkpoints on S3 (moto), and a 2-node local Ray cluster.

Every launch costs tens of seconds, so one straight 30-step run is shared: the resumed and recovered runs
must reproduce its losses bit for bit and its final weights exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import ray
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.integration.conftest import (
    NEOX,
    STEPS,
    finish,
    free_port,
    launch,
    planned_run,
    ray_start_ports,
    run_folder,
    write_config,
)

RAY = str(Path(sys.executable).with_name("ray"))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in records(run_dir)]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir)}


def resumed_from(out: str) -> int | None:
    """The checkpoint step a restored run says it continued from. Ray Train registers a checkpoint seconds after
    its upload, so a worker killed past step 12 may still be at (or beyond) the step-20 checkpoint by then."""
    found = re.search(r"resumed from the step-(\d+) checkpoint", out)
    return int(found.group(1)) if found else None


def wait_for_checkpoint(storage, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until Ray Train's controller has registered a checkpoint of `step` or later. A restarted run gets the
    latest *registered* checkpoint (recorded in checkpoint_manager_snapshot.json), which trails the upload by
    up to one controller poll: a kill inside that window would restart from the checkpoint before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = json.loads(storage.read_text("checkpoint_manager_snapshot.json") or "{}")
        if ((snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}).get("step", 0) >= step:
            return
        assert process.poll() is None, process.communicate()[0][-5000:]
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint of step {step} registered")


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line half-written
            if max(steps(run_dir), default=0) >= step:
                return
        assert process.poll() is None, process.communicate()[0][-5000:]
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a launched command and everything it started (its own session: nobody else's processes)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model" / "model.safetensors")


def test_zero1_trains_logs_to_mlflow_and_exports(straight, tokenized):
    from mlflow import MlflowClient

    from neox.pipeline.summary import logged_losses

    curve = losses(straight)
    assert sorted(curve) == list(range(1, STEPS + 1))
    assert curve[STEPS] < curve[1] - 0.5  # it learns
    run_id = (straight / "mlflow_run_id").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{straight.parent.parent / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [5, 10, 15, 20, 25, 30]
    summarised = logged_losses((straight / "metrics.jsonl").read_text(), log_interval=5)  # the demo's summary
    assert summarised == [(m.step, pytest.approx(m.value)) for m in history]
    assert [m.step for m in client.get_metric_history(run_id, "valid/loss")] == [10, 20, 30]
    run = client.get_run(run_id)
    assert run.data.params["train.zero_stage"] == "1" and run.info.status == "FINISHED"
    assert {"train/tokens_per_s", "train/lr", "train/grad_norm", "valid/perplexity"} <= set(run.data.metrics)
    artifacts = Path(client.download_artifacts(run_id, "", str(straight.parent.parent / "artifacts")))
    assert (artifacts / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    assert (artifacts / "training.png").read_bytes().startswith(b"\x89PNG")
    assert yaml.safe_load((artifacts / "config" / "train.yaml").read_text())["train_iters"] == STEPS
    assert yaml.safe_load((artifacts / "config" / "model.yml").read_text())["num_layers"] == 2
    assert json.loads((artifacts / "config" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 1
    assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["mlflow.user"]
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.digest == json.loads((tokenized / "manifest.json").read_text())["key"]
    assert json.loads(used.dataset.source)["uri"] == str(tokenized.resolve())
    assert json.loads(used.dataset.profile)["tokens"] > 0 and used.tags[0].value == "training"
    # system metrics from the node the workers ran on (one monitor per node), not from the driver
    assert {"system/node_0/cpu_utilization_percentage", "system/node_0/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(straight / "final" / "hf")
    assert hf.config.vocab_size == 2048 and (straight / "final" / "model" / "tokenizer.json").exists()


def test_resume_after_sigkill_reproduces_the_straight_run_bit_for_bit(tmp_path, tokenized, straight):
    config = write_config(tmp_path, tokenized)
    run_dir = run_folder(config)
    first = launch(config)
    wait_for_checkpoint(planned_run(config).storage, 10, first)
    wait_for_step(run_dir, 12, first)
    kill_group(first)
    assert not (run_dir / "final").exists()
    refused = subprocess.run([NEOX, "train", str(config)], capture_output=True, text=True)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    assert resumed_from(finish(launch(config, "--resume"))) in (10, 20)
    assert steps(run_dir) == list(range(1, STEPS + 1))  # the lines the killed attempt logged after step 10 are gone
    assert losses(run_dir) == losses(straight)  # all 30 losses, bitwise
    ours, reference = final_weights(run_dir), final_weights(straight)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def ray_worker_pids(root: psutil.Process) -> list[psutil.Process]:
    return [p for p in root.children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]


def test_a_run_on_s3_survives_a_killed_worker_and_resumes_from_its_s3_checkpoint(tmp_path, tokenized, straight, s3_env):
    """storage_path on S3 (a local moto server): Ray Train's checkpoints, metrics.jsonl, the MLflow marker and
    the final export all land in the bucket; a worker killed after the step-10 checkpoint is replaced and the
    group restores from S3."""
    import boto3

    bucket = f"runs-{os.getpid()}-{time.monotonic_ns()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    config = write_config(tmp_path, tokenized, max_failures=1, storage_path=f"s3://{bucket}/exp")
    storage = planned_run(config).storage
    process = launch(config)
    wait_for_checkpoint(storage, 10, process)
    wait_for_step(storage.local_dir(), 12, process)  # rank 0's working copy, on this one node
    workers = ray_worker_pids(psutil.Process(process.pid))
    assert len(workers) == 2
    workers[1].kill()
    assert resumed_from(finish(process)) in (10, 20)

    published = [json.loads(line) for line in storage.read_text("metrics.jsonl").splitlines()]
    assert [r["step"] for r in published] == list(range(1, STEPS + 1))
    assert {r["step"]: r["loss"] for r in published} == losses(straight)
    assert storage.checkpoints() and storage.read_text("mlflow_run_id")
    weights = tmp_path / "model.safetensors"
    boto3.client("s3").download_file(bucket, f"exp/{storage.name}/final/model/model.safetensors", str(weights))
    reference = final_weights(straight)
    ours = load_file(weights)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert storage.read_text("final", "hf", "config.json")

    refused = subprocess.run([NEOX, "train", str(config)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and f"s3://{bucket}/exp/{storage.name} already holds this run" in refused.stderr
    wider = tmp_path / "wider.yml"
    wider.write_text(
        (REPO / "configs" / "model" / "tiny.yml").read_text().replace('"hidden_size": 64', '"hidden_size": 128')
    )
    config = write_config(tmp_path, tokenized, storage_path=f"s3://{bucket}/exp", model=str(wider))
    refused = subprocess.run([NEOX, "train", str(config), "--resume"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "model differs" in refused.stderr


def test_two_node_local_cluster_runs_zero3_in_bf16_and_exports_gathered_weights(tmp_path, tokenized, straight):
    """Two `ray start` processes on 127.0.0.1, one CPU each, token auth; the driver joins by address and links
    the head's dashboard, which answers only with the token. bf16 mixed precision (DeepSpeed's CPU path supports
    it) with ZeRO-3, the layout that splits the parameters themselves across the nodes (the one whose export
    gathers them first): the exported model is whole, and Hugging Face reads it back with our model's logits."""
    short = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket paths must stay short
    token = short / "token"
    token.write_text("neox-pipeline-test-token-0123456789abcdef")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port, dashboard = free_port(), free_port()
    nodes = []
    try:
        nodes.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    "--block",
                    f"--port={port}",
                    "--num-cpus=1",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}",
                    "--node-ip-address=127.0.0.1",
                    f"--temp-dir={short / 'head'}",
                    *ray_start_ports(),
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 120
        while True:  # the head is up once its dashboard answers at all (401: it asks for the token); slow when loaded
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=2)
            except urllib.error.HTTPError:
                pass
            except OSError:
                assert nodes[0].poll() is None and time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.5)
                continue
            break
        nodes.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    f"--address=127.0.0.1:{port}",
                    "--num-cpus=1",
                    "--node-ip-address=127.0.0.1",
                    f"--temp-dir={short / 'worker'}",
                    *ray_start_ports(),
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(5)
        config = write_config(tmp_path, tokenized, zero_stage=3, precision="bf16", ray_address=f"127.0.0.1:{port}")
        out = finish(launch(config, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}))
        assert f"Ray dashboard: http://127.0.0.1:{dashboard}" in out
        version = f"http://127.0.0.1:{dashboard}/api/version"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(version, timeout=30)
        bearer = {"Authorization": f"Bearer {token.read_text().strip()}"}
        with urllib.request.urlopen(urllib.request.Request(version, headers=bearer), timeout=30) as answer:
            assert json.loads(answer.read())["ray_version"] == ray.__version__
        curve = losses(run_folder(config))
        assert sorted(curve) == list(range(1, STEPS + 1)) and curve[STEPS] < curve[1] - 0.5
    finally:
        for node in nodes:
            kill_group(node)
        shutil.rmtree(short, ignore_errors=True)
    from transformers import AutoModelForCausalLM

    from neox.model.checkpoint import load_model

    exported = run_folder(config) / "final"
    ours = load_model(exported / "model")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in load_model(straight / "final" / "model").state_dict().items()
    }
    theirs = AutoModelForCausalLM.from_pretrained(exported / "hf").eval()
    ids = torch.randint(0, 2048, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), rtol=0, atol=1e-5)


def test_resume_on_other_data_needs_allow_new_data_and_goes_on_as_a_new_run_here_on_a_blend_whose_key_holds_both(
    tmp_path, tokenized, straight, small_corpus, corpus_tokenizer
):
    """A resume is checked by the driver before any worker starts: another model shape is refused, another dataset
    needs --allow-new-data, which continues the run (weights, optimizer, step) on it as a new run naming its origin.
    Here that is the old data blended 3:1 with new data by train.data_weights (continued pretraining that keeps
    some of what it learnt on): the new run's key holds both datasets and their shares."""
    from neox.data.tokenize import TokenizeConfig, tokenize_shards

    storage = tmp_path / "storage"  # a copy: continuing adds a run beside it, and the straight run is shared
    shutil.copytree(straight, storage / straight.name)
    straight = storage / straight.name
    other_data = tokenize_shards(small_corpus, corpus_tokenizer, tmp_path / "work", TokenizeConfig(prefix="other")).path
    config = write_config(tmp_path, other_data, storage_path=str(storage))
    refused = subprocess.run([NEOX, "train", str(config), "--resume"], capture_output=True, text=True, timeout=120)
    assert (
        refused.returncode == 2
        and "trained on another dataset" in refused.stderr
        and "--allow-new-data" in refused.stderr
    )

    wider = tmp_path / "wider.yml"
    wider.write_text(
        (REPO / "configs" / "model" / "tiny.yml").read_text().replace('"hidden_size": 64', '"hidden_size": 128')
    )
    config = write_config(tmp_path, tokenized, storage_path=str(storage), model=str(wider))
    refused = subprocess.run([NEOX, "train", str(config), "--resume"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "model differs" in refused.stderr and "hidden_size" in refused.stderr

    blend = {"data": [str(tokenized), str(other_data)], "data_weights": [3, 1]}
    config = write_config(
        tmp_path, tokenized, storage_path=str(storage), train_iters=STEPS + 5, eval_interval=5, **blend
    )
    before = {p: p.read_bytes() for p in straight.rglob("*") if p.is_file() and "index-cache" not in p.parts}
    out = finish(launch(config, "--resume", "--allow-new-data"))
    (continued,) = [Path(line) for line in out.splitlines() if line.startswith(f"{storage}/")]  # the printed folder
    assert continued != straight and resumed_from(out) == STEPS
    identity = json.loads((continued / "run.json").read_text())["identity"]
    assert identity["continued_from"] == {"run": straight.name, "step": STEPS}
    keys = [json.loads((d / "manifest.json").read_text())["key"] for d in (tokenized, other_data)]
    assert identity["data"] == [[keys[0], 0.75], [keys[1], 0.25]]
    assert steps(continued) == list(range(STEPS + 1, STEPS + 6))  # it went on from step 30, on the blend
    assert "valid/loss=" in out  # validation on both datasets' valid parts, by the same weights
    assert (continued / "final" / "model" / "model.safetensors").exists()
    listed = subprocess.run([NEOX, "runs", str(config)], capture_output=True, text=True, timeout=120).stdout
    assert f"{keys[0]}*0.75+{keys[1]}*0.25" in listed
    # the run it continued is untouched: other settings or data are always another run beside it
    assert {p: p.read_bytes() for p in straight.rglob("*") if p.is_file() and "index-cache" not in p.parts} == before
    # one of the blend's datasets alone is another run, with the key a single-dataset run always had
    alone = write_config(tmp_path, tokenized, storage_path=str(storage), train_iters=STEPS + 5, eval_interval=5)
    assert planned_run(alone).identity["data"] == keys[0]


def test_a_run_this_machine_cannot_place_is_refused_at_once_not_waited_on(tmp_path, tokenized):
    """A local Ray never gains a GPU: Ray Train would retry the placement every 60 s for ever."""
    config = write_config(tmp_path, tokenized, use_gpu=True)
    process = launch(config)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2, out[-3000:]
    assert "error: train: 2 worker(s) of 1 CPU and 1 GPU needs 2 GPU, but this machine's Ray has" in out
    assert "0 GPU: lower train.num_workers or cpus_per_worker, set use_gpu: false" in out
    assert not (tmp_path / "storage").exists() and not (tmp_path / "mlflow.db").exists()  # nothing started


def test_compiled_with_the_chunked_loss_and_fused_adamw_the_engine_trains_the_same_model(tmp_path, tokenized, straight):
    """train.compile (inside the engine), train.cross_entropy chunked (the full logits never made) and
    train.fused_adamw together, as a GPU config sets them: one worker accumulating the straight run's two
    micro-batches (its global batch; eager, the two agree within 2e-7) trains the straight run's first 10 steps
    (the same schedule) within the compiled kernels' rounding, on kernels inductor generated for it."""
    inductor = tmp_path / "inductor"  # a cache of its own: generated kernels there show the compile happened
    config = write_config(
        tmp_path,
        tokenized,
        compile=True,
        cross_entropy="chunked",
        fused_adamw=True,
        num_workers=1,
        gradient_accumulation_steps=2,
        train_iters=10,
        lr_decay_iters=STEPS,
    )
    finish(launch(config, env={"TORCHINDUCTOR_CACHE_DIR": str(inductor)}))
    run_dir = run_folder(config)
    fast, plain = losses(run_dir), losses(straight)
    assert sorted(fast) == list(range(1, 11))
    # fused kernels round differently, so close rather than bitwise
    assert all(abs(fast[s] - plain[s]) < 2e-3 for s in fast), [(s, fast[s], plain[s]) for s in fast]
    assert any(inductor.rglob("*.py")), "inductor generated no kernel: the model was not compiled"
    assert set(final_weights(run_dir)) == set(final_weights(straight))  # plain parameter names in the export


def test_a_loss_that_turns_nan_stops_the_run_at_that_step_without_saving_it_or_retrying(tmp_path, tokenized):
    """lr 1e30 from the first step: step 1's loss is finite (its update comes after it), step 2's NaN. The run stops
    there with a message saying so, keeping step 1's checkpoint (already holding the diverged weights) and never
    writing one of step 2. Ray Train would restart a failed worker group from that checkpoint (max_failures) only to
    diverge again: the workers (two, ZeRO-1) return together instead of failing, and the driver raises."""
    from mlflow import MlflowClient

    from neox.train.checkpointing import latest_state

    config = write_config(
        tmp_path,
        tokenized,
        lr=1e30,
        min_lr=0.0,
        warmup=0.0,
        train_iters=5,
        checkpoint_interval=1,
        max_failures=2,
    )
    process = launch(config)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 2, out[-3000:]  # the command's one-line error
    key = planned_run(config).key
    assert f"error: training run {key} stopped at step 2: its loss is nan" in out, out[-3000:]
    assert "its newest checkpoint (step 1) is kept, though weights already diverging may be in it" in out
    assert "resumed from" not in out and "Error in training function" not in out  # not retried, nothing raised
    assert steps(run_folder(config)) == [1]
    assert latest_state(planned_run(config).storage)["step"] == 1
    assert not (run_folder(config) / "final").exists()
    run_id = (run_folder(config) / "mlflow_run_id").read_text().strip()
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "FAILED"


@pytest.mark.faults
def test_training_goes_on_through_an_mlflow_outage_and_its_metrics_catch_up(tmp_path, tokenized):
    from mlflow import MlflowClient

    from tests.faults.test_mlflow_outage import start_server, stop

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path / "mlflow.db", port)
    config = write_config(tmp_path, tokenized, mlflow_tracking_uri=uri)
    training = launch(config, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    try:
        wait_for_step(run_folder(config), 4, training)
        stop(server)  # from step 5 on, nothing reaches MLflow
        wait_for_step(run_folder(config), 16, training)
        server = start_server(tmp_path / "mlflow.db", port)
        out = finish(training)
    finally:
        stop(server)
        if training.poll() is None:
            os.killpg(training.pid, signal.SIGKILL)
    assert "MLflow: metrics not sent" in out and "could not be sent" not in out
    run_id = (run_folder(config) / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # what the server stored, read directly
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(5, STEPS + 1, 5))
    assert [m.step for m in client.get_metric_history(run_id, "valid/loss")] == [10, 20, 30]
    assert client.get_run(run_id).info.status == "FINISHED"
