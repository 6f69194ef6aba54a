"""Evaluation and registry on the shared trained checkpoint: offline task data from the held-out split only,
our lm-eval adapter against lm-eval's own `hf` model, MLflow logging, registration with lineage, the promotion
gate, loading the champion by alias, and the clear failure when standard-task data is unreachable."""

from __future__ import annotations

import http.server
import json
import math
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
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
from tests.conftest import REPO, Payload, aws_env
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


def test_eval_is_logged_to_mlflow_with_the_hashes_of_what_it_wrote(trained_eval, tracking):
    from mlflow import MlflowClient

    from neox.eval.record import CHECKPOINT_SHA_TAG, RECORDED_FILES, file_tag, find_eval_run, log_eval

    run = find_eval_run(trained_eval, tracking)
    assert log_eval(trained_eval, tracking) == run.info.run_id  # found again, not logged twice
    client = MlflowClient(tracking_uri=tracking)
    assert run.data.metrics == pytest.approx(json.loads((trained_eval / EVAL_METRICS_FILE).read_text()))
    assert run.data.params["eval.model"] == "neox" and [a.path for a in client.list_artifacts(run.info.run_id)] == [
        "results.json"
    ]
    assert {run.data.tags[file_tag(name)] for name in RECORDED_FILES} == {
        sha256_file(trained_eval / name) for name in RECORDED_FILES
    }
    assert run.data.tags[CHECKPOINT_SHA_TAG] == read_manifest(trained_eval)["inputs"]["checkpoint"]


def test_eval_and_training_runs_say_who_ran_which_code_and_the_eval_is_nested_under_its_training_run(
    trained_eval, straight, tracking
):
    from mlflow import MlflowClient

    from neox.eval.record import find_eval_run, log_eval

    train_run_id = (straight / "mlflow_run_id").read_text().strip()
    elsewhere = find_eval_run(trained_eval, tracking)  # logged to another store than the training run's
    assert elsewhere.data.tags["neox.train_run_id"] == train_run_id
    assert "mlflow.parentRunId" not in elsewhere.data.tags

    train_tracking = f"sqlite:///{straight.parent.parent / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=train_tracking)
    nested = client.get_run(log_eval(trained_eval, train_tracking))
    assert nested.data.tags["mlflow.parentRunId"] == train_run_id == nested.data.tags["neox.train_run_id"]
    for run in (nested, client.get_run(train_run_id), elsewhere):
        tags = run.data.tags
        assert tags["mlflow.user"] and tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
        assert len(tags["mlflow.source.git.commit"]) == 40


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

    from neox.eval.record import evaluate_and_record
    from neox.model.checkpoint import load_model
    from neox.model.generate import SamplingConfig, generate
    from neox.registry.mlflow_registry import CANDIDATE, CHAMPION, DECISION_TAG, PREVIOUS_CHAMPION, promote, register
    from neox.registry.rule import PromotionRule

    rule = PromotionRule(metric="neox_heldout/bits_per_byte", direction="minimize")
    client = MlflowClient(tracking_uri=tracking)

    def evaluated(checkpoint: Path) -> Path:
        return evaluate_and_record(checkpoint, eval_data, work, EvalConfig(batch_size=8), tracking)[0].path

    first = register(evaluated(untrained_checkpoint(work, straight, 0)), "tiny", tracking)
    assert promote("tiny", first, rule, tracking).promote  # no champion yet, no floors
    trained = register(trained_eval, "tiny", tracking, work_root=None)
    decision = promote("tiny", trained, rule, tracking)
    assert decision.promote, decision.reasons
    assert str(client.get_model_version_by_alias("tiny", CHAMPION).version) == trained
    assert str(client.get_model_version_by_alias("tiny", PREVIOUS_CHAMPION).version) == first

    worse = register(evaluated(untrained_checkpoint(work, straight, 1)), "tiny", tracking)
    for _ in range(2):  # a retried promotion decides the same and moves nothing
        assert not promote("tiny", worse, rule, tracking).promote
        assert str(client.get_model_version_by_alias("tiny", CHAMPION).version) == trained
        assert str(client.get_model_version_by_alias("tiny", CANDIDATE).version) == worse
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
    logged = Path(mlflow.artifacts.download_artifacts(f"models:/tiny@{CHAMPION}"))
    assert (logged / "input_example.json").is_file()
    assert not list(logged.rglob("*.pkl"))  # a model from code: loading it unpickles nothing
    (logged_model,) = client.get_run(client.get_model_version("tiny", trained).run_id).outputs.model_outputs
    model_id = logged_model.model_id
    linked = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])  # the UI's "Registered"
    assert {"name": "tiny", "version": trained} in [{**v, "version": str(v["version"])} for v in linked]
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


BPB = "neox_heldout/bits_per_byte"


def forged(output: Path, bits_per_byte: float) -> None:
    """Write a better score into an eval output's metrics.json and manifest, the manifest's file list updated so
    that the stage's own check of the output passes."""
    metrics = json.loads((output / EVAL_METRICS_FILE).read_text())
    (output / EVAL_METRICS_FILE).write_text(json.dumps({**metrics, BPB: bits_per_byte}))
    manifest = read_manifest(output)
    manifest["stats"]["metrics"][BPB] = bits_per_byte
    manifest["files"][EVAL_METRICS_FILE] = {
        "sha256": sha256_file(output / EVAL_METRICS_FILE),
        "bytes": (output / EVAL_METRICS_FILE).stat().st_size,
    }
    (output / "manifest.json").write_text(json.dumps(manifest))


def test_a_tampered_copied_or_hand_written_eval_output_is_refused_and_registers_nothing(
    work, eval_data, straight, tracking, tokenized, tmp_path
):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from neox.errors import DataError, RunStateError
    from neox.eval.record import evaluate_and_record
    from neox.registry.mlflow_registry import register

    checkpoint = untrained_checkpoint(work / "tampered", straight, 3)
    output = evaluate_and_record(checkpoint, eval_data, work, EvalConfig(batch_size=8), tracking)[0].path
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("neox-pipeline").experiment_id
    runs_before = len(client.search_runs([experiment]))
    manifest, metrics = (output / "manifest.json").read_bytes(), (output / EVAL_METRICS_FILE).read_bytes()

    forged(output, 0.001)  # a better score written in, the manifest's file list made to agree
    with pytest.raises(DataError, match=r"manifest.json changed after it was evaluated: sha256 \w+, eval run"):
        register(output, "forged", tracking)
    (output / "manifest.json").write_bytes(manifest)  # the score edited in metrics.json alone
    with pytest.raises(DataError, match="metrics.json changed after it was evaluated"):
        register(output, "forged", tracking)
    (output / EVAL_METRICS_FILE).write_bytes(metrics)

    copy = tmp_path / "copy"  # the probe's attack: a copy of a real output, its score edited
    shutil.copytree(output, copy)
    forged(copy, 0.001)
    with pytest.raises(RunStateError, match="copy has no eval run in sqlite.* only an output the eval stage logged"):
        register(copy, "forged", tracking)
    with pytest.raises(DataError, match="is a tokenize stage output, not an eval output"):
        register(tokenized, "forged", tracking)

    weights = checkpoint / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"\0\0\0\0")
    with pytest.raises(DataError, match="the checkpoint .* changed after it was evaluated"):
        register(output, "forged", tracking)
    weights.write_bytes(original)
    config = checkpoint / "config.yml"  # not only the weights: every file registering uploads
    config.write_text(config.read_text() + "\n")
    with pytest.raises(DataError, match="the checkpoint .* changed after it was evaluated"):
        register(output, "forged", tracking)
    config.write_text(config.read_text()[:-1])
    weights.unlink()
    with pytest.raises(RunStateError, match="is gone: nothing to register"):
        register(output, "forged", tracking)
    with pytest.raises(MlflowException):
        client.get_registered_model("forged")
    assert len(client.search_runs([experiment])) == runs_before

    # the way on from a tampered output: evaluate again, which redoes it (its record no longer matches) and
    # records the new output; that one registers
    weights.write_bytes(original)
    forged(output, 0.001)
    again, run_id = evaluate_and_record(checkpoint, eval_data, work, EvalConfig(batch_size=8), tracking)
    assert again.path == output and not again.reused
    assert client.get_run(run_id).data.metrics[BPB] == pytest.approx(json.loads(metrics)[BPB])
    assert register(output, "recovered", tracking) == "1"


def test_a_checkpoint_swapped_during_its_eval_or_registration_changes_neither_the_score_nor_the_upload(
    work, eval_data, straight, tracking, tmp_path, monkeypatch
):
    """Whoever can write the work root could swap a checkpoint's weights after they were hashed and back again
    later: the eval would record another model's score, registration upload another model. Both read a private
    copy made as the files are hashed (the swaps below happen right after the hashing)."""
    import neox.eval.run as eval_run
    import neox.registry.mlflow_registry as registry
    from neox.errors import DataError
    from neox.eval.record import evaluate_and_record

    checkpoint = untrained_checkpoint(work / "swapped", straight, 5)
    weights = checkpoint / "model.safetensors"
    genuine = weights.read_bytes()
    other = (straight / "final" / "model" / "model.safetensors").read_bytes()  # the trained model scores better
    reference = evaluate_and_record(checkpoint, eval_data, tmp_path / "ref", EvalConfig(batch_size=8), tracking)[0]

    def swapped_during(function):
        def run(*args, **kwargs):
            weights.write_bytes(other)
            try:
                return function(*args, **kwargs)
            finally:
                weights.write_bytes(genuine)

        return run

    monkeypatch.setattr(eval_run, "run_lm_eval", swapped_during(eval_run.run_lm_eval))
    output, run_id = evaluate_and_record(checkpoint, eval_data, work, EvalConfig(batch_size=8), tracking)
    assert json.loads((output.path / EVAL_METRICS_FILE).read_text()) == json.loads(
        (reference.path / EVAL_METRICS_FILE).read_text()
    )
    monkeypatch.undo()

    def swapped_after(function):
        def run(*args, **kwargs):
            result = function(*args, **kwargs)
            weights.write_bytes(other)
            return result

        return run

    monkeypatch.setattr(registry, "verified_eval_run", swapped_after(registry.verified_eval_run))
    version = registry.register(output.path, "swapped", tracking)
    weights.write_bytes(genuine)
    uploaded = Path(mlflow_download(f"models:/swapped/{version}", tmp_path / "uploaded", tracking))
    assert (uploaded / "artifacts" / "model" / "model.safetensors").read_bytes() == genuine
    monkeypatch.undo()

    # swapped before the copy is made: refused, nothing recorded
    monkeypatch.setattr(eval_run, "evaluated_here", swapped_during(eval_run.evaluated_here))
    with pytest.raises(DataError, match="changed after its eval began"):
        evaluate_and_record(checkpoint, eval_data, tmp_path / "late", EvalConfig(batch_size=8), tracking)
    assert not list((tmp_path / "late").rglob("manifest.json"))


def test_an_eval_output_nothing_vouches_for_is_recomputed_not_logged(trained_eval, straight, eval_data, tmp_path):
    """A forged output planted under the very key the eval stage computes passes the stage's own manifest check;
    a tracking store with no record of it does not trust it: the stage evaluates again."""
    from mlflow import MlflowClient

    from neox.eval.record import evaluate_and_record

    planted = tmp_path / "work" / "eval" / trained_eval.name
    shutil.copytree(trained_eval, planted)
    forged(planted, 0.001)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    result, run_id = evaluate_and_record(
        straight / "final" / "model", eval_data, tmp_path / "work", EvalConfig(batch_size=8), fresh
    )
    assert result.path == planted and not result.reused
    true_score = json.loads((trained_eval / EVAL_METRICS_FILE).read_text())[BPB]
    assert MlflowClient(tracking_uri=fresh).get_run(run_id).data.metrics[BPB] == pytest.approx(true_score)


def test_promote_names_what_is_missing_in_one_line(trained_eval, tracking):
    from neox.errors import ConfigError, RunStateError
    from neox.registry.mlflow_registry import promote
    from neox.registry.rule import PromotionRule

    with pytest.raises(RunStateError, match="no registered model 'nope' in sqlite"):
        promote("nope", "1", PromotionRule(), tracking)
    with pytest.raises(ConfigError, match="a model version is a number .* got 'abc'"):
        promote("nope", "abc", PromotionRule(), tracking)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking).create_registered_model("empty")
    with pytest.raises(RunStateError, match="empty has no version 7 in sqlite"):
        promote("empty", "7", PromotionRule(), tracking)


def test_eval_with_the_hf_model_refuses_pickled_weights_without_loading_them(straight, eval_data, tmp_path):
    from neox.errors import ConfigError
    from neox.eval.run import run_lm_eval

    checkpoint = tmp_path / "run" / "final" / "model"
    shutil.copytree(straight / "final", tmp_path / "run" / "final")
    hf_dir = checkpoint.parent / "hf"
    (hf_dir / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save(Payload(str(marker)), hf_dir / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"holds pickled weights \(pytorch_model.bin\), which can carry code"):
        run_lm_eval(checkpoint, eval_data, EvalConfig(model="hf", batch_size=8))
    assert not marker.exists()


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


@pytest.fixture(scope="module")
def http_registry(tmp_path_factory, s3_endpoint, straight, eval_data) -> Iterator[tuple[str, Path, str]]:
    """`mlflow server` on 127.0.0.1 (SQLite backend) proxying artifacts to a bucket on the moto server, and the
    trained checkpoint's evaluation recorded through it: (its URI, the eval output, the bucket)."""
    import boto3

    from neox.eval.record import evaluate_and_record
    from tests.faults.test_mlflow_outage import start_server, stop

    root = tmp_path_factory.mktemp("http-registry")
    aws = aws_env(s3_endpoint)
    bucket = f"mlflow-{os.getpid()}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=bucket)
    port = free_port()
    server = start_server(
        root / "server.db",
        port,
        artifacts=f"s3://{bucket}/artifacts",
        env={**aws, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        evaluated, _ = evaluate_and_record(
            straight / "final" / "model", eval_data, root / "work", EvalConfig(batch_size=8), uri
        )
        yield uri, evaluated.path, bucket
    finally:
        stop(server)


def test_registry_through_an_mlflow_server_with_artifacts_on_s3(http_registry, s3_env):
    import boto3
    import mlflow
    from mlflow import MlflowClient

    from neox.registry.mlflow_registry import CHAMPION, promote, register
    from neox.registry.rule import PromotionRule

    uri, evaluated, bucket = http_registry
    version = register(evaluated, "tiny-http", uri)
    assert promote("tiny-http", version, PromotionRule(), uri).promote
    assert str(MlflowClient(tracking_uri=uri).get_model_version_by_alias("tiny-http", CHAMPION).version) == version
    mlflow.set_tracking_uri(uri)
    assert mlflow.pyfunc.load_model(f"models:/tiny-http@{CHAMPION}").predict(
        ["def main():"], params={"max_new_tokens": 4}
    )[0]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    # this version's own weights (the bucket is the module's: other tests register from the same evaluation)
    source = MlflowClient(tracking_uri=uri).get_model_version("tiny-http", version).source
    assert any(f"artifacts/{urlparse(source).path.strip('/')}/" in k and k.endswith("model.safetensors") for k in keys)
    assert any(k.endswith("results.json") for k in keys)


class FailingProxy(http.server.ThreadingHTTPServer):
    """Passes requests on to an MLflow server, answering 503 instead to those whose path has `fail_on` in it while
    `failing` is set: the tracking server failing in the middle of a registration."""

    def __init__(self, upstream: str, fail_on: str):
        self.upstream, self.fail_on, self.failing = upstream, fail_on, False
        super().__init__(("127.0.0.1", 0), _Forward)


class _Forward(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _forward(self):
        import requests

        proxy: FailingProxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if proxy.failing and proxy.fail_on in self.path:
            self.send_error(503)
            return
        skip = {"host", "content-length", "connection", "transfer-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        answer = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body, timeout=60)
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in skip | {"content-encoding"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@pytest.mark.faults
def test_a_registration_the_tracking_server_fails_midway_registers_nothing_and_a_retry_completes(
    http_registry, tmp_path, monkeypatch
):
    """The server fails the last step (creating the version), after the model's files went up: no version
    exists, and registering again makes exactly one, whose model loads."""
    import threading

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from neox.registry.mlflow_registry import register

    upstream, evaluated, _ = http_registry
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    proxy = FailingProxy(upstream, "/model-versions/create")
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        proxy.failing = True
        with pytest.raises(MlflowException):
            register(evaluated, "midway", uri)
        client = MlflowClient(tracking_uri=uri)
        assert client.search_model_versions("name='midway'") == []
        proxy.failing = False
        assert register(evaluated, "midway", uri) == "1"
        assert register(evaluated, "midway", uri) == "1"  # and once only
        (version,) = client.search_model_versions("name='midway'")
        local = Path(mlflow_download(version.source, tmp_path / "downloaded", uri))
        assert (local / "artifacts" / "model" / "model.safetensors").is_file()
    finally:
        proxy.shutdown()


def mlflow_download(source: str, destination: Path, uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    destination.mkdir(parents=True)
    return mlflow.artifacts.download_artifacts(source, dst_path=str(destination))


SELF_SUFFICIENT = """
import json, sys
from importlib.metadata import packages_distributions
import mlflow.pyfunc
# neox-pipeline installed in this venv is hidden: the model must bring the code it runs
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if p.rstrip("/") != sys.argv[2]]
before = set(sys.modules)
model = mlflow.pyfunc.load_model(sys.argv[1])
text = model.predict(["Once upon a time"], params={"max_new_tokens": 4})
import neox
imported = {m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names) - {"neox"}
owners = packages_distributions()
dists = sorted({d for m in imported for d in owners.get(m, [])})
print(json.dumps({"neox": neox.__file__, "text": text, "dists": dists}))
"""


def requirement_closure(names: list[str]) -> set[str]:
    """The distributions `names` need, dependencies included (extras left out), as lowercase names."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        for spec in map(Requirement, needs):
            if spec.marker is None or spec.marker.evaluate({"extra": ""}):
                todo.append(spec.name.lower().replace("_", "-"))
    return seen


def test_the_champion_serves_from_a_copied_folder_with_nothing_on_path(work, trained_eval, tracking, tmp_path):
    """The logged model carries its code and names published packages only; `neox serve` answers batched
    requests with the params honoured, and a bad one with a 400 that says why, with the venv off PATH."""
    import mlflow

    from neox.registry.mlflow_registry import promote, register
    from neox.registry.rule import PromotionRule

    version = register(trained_eval, "served", tracking)
    assert promote("served", version, PromotionRule(), tracking).promote
    downloaded = Path(mlflow_download("models:/served@champion", tmp_path / "downloaded", tracking))
    model = tmp_path / "elsewhere" / "model"
    shutil.copytree(downloaded, model)
    shutil.rmtree(tmp_path / "downloaded")

    requirements = (model / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.startswith("neox")] and all("==" in r for r in requirements)
    loaded = subprocess.run(
        [sys.executable, "-c", SELF_SUFFICIENT, str(model), str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    found = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert found["neox"].startswith(str(model / "code")) and found["text"][0]
    needed = requirement_closure([r.split("==")[0] for r in requirements] + ["mlflow"])
    optional = {"dill", "nvidia-ml-py", "colorama"}  # torch imports them when they are installed, not needing them
    assert {d.lower().replace("_", "-") for d in found["dists"]} - optional <= needed

    port = free_port()
    server = subprocess.Popen(
        [NEOX, "serve", str(model), "--port", str(port)],
        env={**os.environ, "PATH": "/usr/bin:/bin"},  # no venv: MLflow's own `models serve` fails here
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)

        def ask(prompts: list[str], **params) -> tuple[int, object]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=json.dumps({"inputs": prompts, "params": params}).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as answer:
                    return answer.status, json.loads(answer.read())["predictions"]
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())["message"]

        prompts = ["Once upon a time", "def main():", "Once upon a time", "import"]
        status, greedy = ask(prompts, max_new_tokens=8)
        direct = mlflow.pyfunc.load_model(str(model)).predict(prompts, params={"max_new_tokens": 8})
        assert status == 200 and greedy == direct and greedy[0] == greedy[2] and len(greedy) == 4
        sampled = [ask(prompts[:2], max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=3)[1] for _ in "ab"]
        assert sampled[0] == sampled[1] != greedy[:2]  # seeded sampling repeats itself
        text = greedy[1]
        stop = text[len(text) // 2 :][:2]
        assert ask(["def main():"], max_new_tokens=8, stop=[stop]) == (200, [text[: text.find(stop)]])

        status, message = ask(["Once upon a time"], temperature=-1.0)
        assert status == 400 and "temperature must be >= 0" in message
        status, message = ask(["Once upon a time"], max_new_tokens=500)
        assert status == 400 and "leaves no room for a prompt in the model's context of 128 tokens" in message
        long_prompt = "word " * 400  # far past the context: its last tokens are kept
        assert ask([long_prompt], max_new_tokens=4)[0] == 200
    finally:
        server.terminate()
        out = server.communicate(timeout=60)[0]
    assert "Traceback" not in out and f"curl -s http://127.0.0.1:{port}/invocations" in out
