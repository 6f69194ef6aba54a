"""Evaluation and registry on the shared trained checkpoint: offline task data from the held-out split only,
our lm-eval adapter against lm-eval's own `hf` model, MLflow logging, registration with lineage, the promotion
gate, loading the champion by alias, and the clear failure when standard-task data is unreachable."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
import torch

from neox.data.indexed import IndexedDataset
from neox.data.tokenize import data_prefix
from neox.data.tokenizer import eod_id, load_tokenizer
from neox.eval.config import EvalConfig, EvalDataConfig
from neox.eval.data import HELDOUT_FILE, LASTWORD_FILE, eval_data_stage
from neox.eval.run import EVAL_METRICS_FILE, eval_stage
from neox.pipeline.layout import DEEPSPEED_TAG, STATE_FILE, TOKENIZER_FILE
from neox.pipeline.stage import read_manifest, sha256_file
from tests.integration.conftest import NEOX, SPLIT, STEPS, free_port, wait_for_http


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-work")


@pytest.fixture(scope="module")
def eval_data(work, tokenized) -> Path:
    return eval_data_stage(tokenized, work, EvalDataConfig(split=SPLIT, max_documents=15, lastword_chars=300)).path


@pytest.fixture(scope="module")
def tracking(work) -> str:
    return f"sqlite:///{work / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained_eval(work, eval_data, straight, tracking) -> Path:
    """`neox eval` on the trained checkpoint, as a user runs it (metrics table, MLflow run, stage output)."""
    out = subprocess.run(
        [
            NEOX,
            "eval",
            str(straight / "final" / "model"),
            "--eval-data",
            str(eval_data),
            "--batch-size",
            "8",
            "--work-root",
            str(work),
            "--mlflow-tracking-uri",
            tracking,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "neox_heldout/bits_per_byte" in out.stdout and "MLflow run" in out.stdout
    return Path(out.stdout.strip().splitlines()[-1])


def decoded_documents(tokenized: Path, start: int, end: int) -> set[str]:
    tok = load_tokenizer(tokenized / TOKENIZER_FILE)
    indexed, eod = IndexedDataset(data_prefix(tokenized)), eod_id(load_tokenizer(tokenized / TOKENIZER_FILE))
    return {tok.decode([int(t) for t in indexed[i] if t != eod], skip_special_tokens=False) for i in range(start, end)}


def test_eval_data_holds_only_documents_training_left_out(eval_data, tokenized):
    stats = read_manifest(eval_data)["stats"]
    (start, end), (train_start, train_end) = stats["document_range"], stats["train_range"]
    assert train_start == 0 and train_end <= start < end
    heldout = [json.loads(line) for line in (eval_data / HELDOUT_FILE).read_text().splitlines()]
    assert len(heldout) == stats["documents"] > 5 and all(start <= d["document"] < end for d in heldout)
    assert not {d["text"] for d in heldout} & decoded_documents(tokenized, train_start, train_end)
    texts = {d["document"]: d["text"] for d in heldout}
    for passage in (json.loads(line) for line in (eval_data / LASTWORD_FILE).read_text().splitlines()):
        text = texts[passage["document"]]
        assert text.startswith(passage["context"]) and passage["target"].isalpha() and len(passage["target"]) >= 3
        assert text[len(passage["context"]) :].lstrip().startswith(passage["target"])


def test_our_adapter_scores_like_lm_eval_hf_on_the_offline_tasks(trained_eval, straight, eval_data, work):
    ours = json.loads((trained_eval / EVAL_METRICS_FILE).read_text())
    reference = eval_stage(straight / "final" / "model", eval_data, work, EvalConfig(model="hf", batch_size=8)).path
    theirs = json.loads((reference / EVAL_METRICS_FILE).read_text())
    assert (
        set(ours)
        == set(theirs)
        >= {
            "neox_heldout/word_perplexity",
            "neox_heldout/byte_perplexity",
            "neox_heldout/bits_per_byte",
            "neox_lastword/acc",
            "neox_lastword/perplexity",
        }
    )
    for name in ours:
        if "perplexity" in name:  # exp of a sum over thousands of tokens: compare on the log scale
            assert abs(math.log(ours[name]) - math.log(theirs[name])) <= 1e-4, (name, ours[name], theirs[name])
        else:
            assert abs(ours[name] - theirs[name]) <= 1e-4, (name, ours[name], theirs[name])
    assert 0 < ours["neox_heldout/bits_per_byte"] < 8


def test_evaluation_runs_as_a_ray_task_on_the_cluster_with_the_same_results(
    trained_eval, straight, eval_data, tmp_path
):
    """eval.ray_address: a flow on a head node without a GPU has lm-eval run on the cluster (here: the session's
    local Ray; on a cluster the task holds a GPU). Same stage key and metrics, computed in a Ray worker."""
    import os

    import ray

    remote = eval_stage(
        straight / "final" / "model",
        eval_data,
        tmp_path,
        EvalConfig(batch_size=8, ray_address=ray.get_runtime_context().gcs_address),
    ).path
    assert remote.name == trained_eval.name  # where it ran is not part of the key
    assert json.loads((remote / EVAL_METRICS_FILE).read_text()) == json.loads(
        (trained_eval / EVAL_METRICS_FILE).read_text()
    )
    ran_on = read_manifest(remote)["stats"]["ran_on"]
    assert ran_on["pid"] != os.getpid() and ran_on["host"]  # a Ray worker process, not this one


def test_generate_until_matches_lm_eval_hf(straight, eval_data):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from neox.eval.adapter import NeoxLM

    passages = [json.loads(line)["context"] for line in (eval_data / LASTWORD_FILE).read_text().splitlines()[:4]]
    requests = [
        Instance("generate_until", {}, (text[-200:], {"until": ["\n\n"], "max_gen_toks": 12}), i)
        for i, text in enumerate(passages)
    ]
    ours = NeoxLM(pretrained=str(straight / "final" / "model"), batch_size=4).generate_until(requests)
    theirs = HFLM(
        pretrained=str(straight / "final" / "hf"), device="cpu", batch_size=4, dtype="float32"
    ).generate_until(requests)
    assert ours == theirs and any(ours)


def test_eval_is_logged_to_mlflow(trained_eval, tracking):
    from mlflow import MlflowClient

    from neox.eval.run import log_eval

    run_id = log_eval(trained_eval, tracking)
    assert log_eval(trained_eval, tracking) == run_id  # found again by the output's key, not logged twice
    client = MlflowClient(tracking_uri=tracking)
    run = client.get_run(run_id)
    assert run.data.metrics == pytest.approx(json.loads((trained_eval / EVAL_METRICS_FILE).read_text()))
    assert run.data.params["eval.model"] == "neox" and [a.path for a in client.list_artifacts(run_id)] == [
        "results.json"
    ]


def untrained_checkpoint(directory: Path, straight: Path, seed: int) -> Path:
    from neox.model.checkpoint import load_model, save_model
    from neox.model.gpt_neox import initialized

    cfg = load_model(straight / "final" / "model").cfg
    model = initialized(cfg, seed)
    return save_model(
        model,
        directory / f"untrained{seed}" / "final" / "model",
        tokenizer_file=straight / "final" / "model" / TOKENIZER_FILE,
    )


def test_registration_promotion_and_loading_the_champion(work, eval_data, straight, tokenized, trained_eval, tracking):
    import mlflow
    from mlflow import MlflowClient

    from neox.model.checkpoint import load_model
    from neox.model.generate import SamplingConfig, generate
    from neox.registry.mlflow_registry import CANDIDATE, CHAMPION, DECISION_TAG, PREVIOUS_CHAMPION, promote, register
    from neox.registry.rule import PromotionRule

    rule = PromotionRule(metric="neox_heldout/bits_per_byte", direction="minimize")
    client = MlflowClient(tracking_uri=tracking)

    def evaluated(checkpoint: Path) -> Path:
        return eval_stage(checkpoint, eval_data, work, EvalConfig(batch_size=8)).path

    first = register(evaluated(untrained_checkpoint(work, straight, 0)), "tiny", tracking)
    assert promote("tiny", first, rule, tracking).promote  # no champion yet, no floors
    trained = register(trained_eval, "tiny", tracking, work_root=None)
    decision = promote("tiny", trained, rule, tracking)
    assert decision.promote, decision.reasons
    assert client.get_model_version_by_alias("tiny", CHAMPION).version == trained
    assert client.get_model_version_by_alias("tiny", PREVIOUS_CHAMPION).version == first

    worse = register(evaluated(untrained_checkpoint(work, straight, 1)), "tiny", tracking)
    for _ in range(2):  # a retried promotion decides the same and moves nothing
        assert not promote("tiny", worse, rule, tracking).promote
        assert client.get_model_version_by_alias("tiny", CHAMPION).version == trained
        assert client.get_model_version_by_alias("tiny", CANDIDATE).version == worse
    record = json.loads(client.get_model_version("tiny", worse).tags[DECISION_TAG])
    assert not record["promoted"] and record["champion_version"] == trained
    assert (
        record["candidate_metrics"]["neox_heldout/bits_per_byte"]
        > record["champion_metrics"]["neox_heldout/bits_per_byte"]
    )
    assert promote("tiny", trained, rule, tracking).reasons == ("already champion",)
    assert register(trained_eval, "tiny", tracking) == trained  # the same evaluation is one version

    tags = client.get_model_version("tiny", trained).tags
    assert tags["neox.train_run_id"] == (straight / "mlflow_run_id").read_text().strip()
    assert tags["neox.tokenized_manifest_sha256"] == sha256_file(tokenized / "manifest.json")
    assert tags["neox.tokenizer_sha256"] == sha256_file(tokenized / TOKENIZER_FILE)
    assert tags["neox.model_config_sha256"] == sha256_file(straight / "final" / "model" / "config.yml")
    assert len(tags["neox.git_commit"]) in (40, 7)
    newest = Path(url2pathname(urlparse(tags["neox.deepspeed_checkpoint"]).path))  # the final step's checkpoint
    assert (newest / DEEPSPEED_TAG).is_dir() and json.loads((newest / STATE_FILE).read_text())["step"] == STEPS

    mlflow.set_tracking_uri(tracking)
    champion = mlflow.pyfunc.load_model(f"models:/tiny@{CHAMPION}")
    text = champion.predict(["Once upon a time"], params={"max_new_tokens": 12})
    tok = load_tokenizer(straight / "final" / "model" / TOKENIZER_FILE)
    ids = tok.encode("Once upon a time").ids
    expected = generate(
        load_model(straight / "final" / "model"),
        torch.tensor([ids]),
        SamplingConfig(max_new_tokens=12, eos_token_id=eod_id(tok)),
    )[0, len(ids) :].tolist()
    assert text == [tok.decode(expected)] and text[0]


def test_unreachable_standard_task_data_fails_fast_naming_the_datasets(monkeypatch, tmp_path):
    import datasets
    from huggingface_hub import constants
    from lm_eval.tasks import TaskManager

    from neox.eval.config import PYTHIA_SUITE
    from neox.eval.run import TaskDataUnavailable, check_task_data

    manager = TaskManager()
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(TaskDataUnavailable, match="not reachable") as err:
        check_task_data(list(PYTHIA_SUITE), manager)
    assert "EleutherAI/lambada_openai" in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(TaskDataUnavailable, match="not in the cache") as err:
        check_task_data(["piqa", "arc_easy"], manager)
    assert "allenai/ai2_arc" in str(err.value) and "baber/piqa" in str(err.value)


def test_registry_through_an_mlflow_server_with_artifacts_on_s3(trained_eval, tmp_path, s3_env):
    """`mlflow server` on 127.0.0.1 (SQLite backend) proxying artifacts to S3 (the moto server)."""
    import os
    import signal
    import sys

    import boto3
    import mlflow
    from mlflow import MlflowClient

    from neox.registry.mlflow_registry import CHAMPION, promote, register
    from neox.registry.rule import PromotionRule

    bucket = f"mlflow-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            f"s3://{bucket}/artifacts",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", server)
        version = register(trained_eval, "tiny-http", uri)
        assert promote("tiny-http", version, PromotionRule(), uri).promote
        assert MlflowClient(tracking_uri=uri).get_model_version_by_alias("tiny-http", CHAMPION).version == version
        mlflow.set_tracking_uri(uri)
        assert mlflow.pyfunc.load_model(f"models:/tiny-http@{CHAMPION}").predict(
            ["def main():"], params={"max_new_tokens": 4}
        )[0]
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
        assert any(k.endswith("model.safetensors") for k in keys) and any(k.endswith("results.json") for k in keys)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its worker processes, nothing else
        server.wait()
