"""A run's storage: a local folder or s3://bucket/prefix (a local moto server, real HTTP), the same calls for both."""

from __future__ import annotations

import pickle
import shutil

import boto3
import pytest

from neox.errors import ConfigError
from neox.train.storage import run_storage


def test_a_local_run_is_its_own_working_folder(tmp_path):
    storage = run_storage(str(tmp_path / "runs"), "exp")
    assert storage.is_local and storage.uri == str(tmp_path / "runs" / "exp")
    assert storage.local_dir() == tmp_path / "runs" / "exp"
    assert storage.read_text("mlflow_run_id") is None and storage.checkpoints() == []
    storage.write_text("abc", "mlflow_run_id")
    (tmp_path / "runs" / "exp" / "checkpoint_2026-01-02").mkdir()
    (tmp_path / "runs" / "exp" / "checkpoint_2026-01-01").mkdir()
    (tmp_path / "runs" / "exp" / "checkpoint_manager_snapshot.json").write_text("{}")
    assert storage.read_text("mlflow_run_id") == "abc"
    assert storage.checkpoints() == ["checkpoint_2026-01-01", "checkpoint_2026-01-02"]
    storage.delete("mlflow_run_id")
    storage.delete("mlflow_run_id")  # already gone: nothing to do
    assert storage.read_text("mlflow_run_id") is None


def test_an_s3_run_works_through_the_aws_environment(tmp_path, s3_env):
    boto3.client("s3").create_bucket(Bucket="runs")
    storage = run_storage("s3://runs/team/", "exp")
    assert (
        not storage.is_local
        and storage.uri == "s3://runs/team/exp"
        and (storage.parent, storage.name) == ("runs/team", "exp")
    )
    shutil.rmtree(storage.local_dir(), ignore_errors=True)  # the scratch folder of an earlier test session
    assert storage.checkpoints() == [] and storage.read_text("mlflow_run_id") is None
    storage.write_text("abc", "mlflow_run_id")
    storage.write_text('{"step": 10}', "checkpoint_000001", "neox_state.json")

    # what the driver pickles to Ray Train's controller and workers reaches the same bucket
    remote = pickle.loads(pickle.dumps(storage))
    assert remote.read_text("mlflow_run_id") == "abc" and remote.checkpoints() == ["checkpoint_000001"]

    local = remote.local_dir()
    (local / "final" / "hf").mkdir(parents=True)
    (local / "final" / "hf" / "config.json").write_text("{}")
    (local / "metrics.jsonl").write_text('{"step": 1}\n')
    remote.publish(local / "final", "final")
    remote.publish(local / "metrics.jsonl", "metrics.jsonl")
    remote.write_text("{}", "diverged.json")
    remote.delete("diverged.json")
    remote.delete("diverged.json")
    listing = boto3.client("s3").list_objects_v2(Bucket="runs")["Contents"]
    keys = sorted(o["Key"] for o in listing if not o["Key"].endswith("/"))  # pyarrow also writes folder markers
    assert keys == [
        "team/exp/checkpoint_000001/neox_state.json",
        "team/exp/final/hf/config.json",
        "team/exp/metrics.jsonl",
        "team/exp/mlflow_run_id",
    ]


@pytest.mark.parametrize(
    "storage_path, name, message",
    [
        ("gs://bucket/runs", "exp", "local path or s3://"),
        ("s3://", "exp", "names no bucket"),
        ("runs", "a/b", "must be a plain name"),
    ],
)
def test_bad_storage_is_a_clear_error(storage_path, name, message):
    with pytest.raises(ConfigError, match=message):
        run_storage(storage_path, name)
