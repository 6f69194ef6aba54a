"""Where an MLflow experiment we create keeps its artifacts, creating one from two places at once, and which
tracking URIs name a store."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from mlflow import MlflowClient

from neox.errors import ConfigError
from neox.runtime.tracking_uri import artifact_location, checked_tracking_uri, get_or_create_experiment


def test_in_a_sqlite_store_artifacts_go_beside_the_database_wherever_the_command_runs(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's default would put them in ./mlruns here
    (tmp_path / "store").mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    made = get_or_create_experiment(client, "neox pipeline/a")
    assert get_or_create_experiment(client, "neox pipeline/a") == made  # found again, not made twice
    run = client.create_run(made)
    client.log_text(run.info.run_id, "hello", "note.txt")
    (folder,) = (tmp_path / "store" / "mlruns").iterdir()
    assert client.get_experiment(made).artifact_location == folder.as_uri()
    assert folder.name.startswith("neox_pipeline_a-")  # the name made safe for a path, and a hash of it
    assert (folder / run.info.run_id / "artifacts" / "note.txt").read_text() == "hello"
    assert not list(elsewhere.iterdir())
    # names that would make the same folder, or climb out of it, each get their own inside it
    others = {
        client.get_experiment(get_or_create_experiment(client, n)).artifact_location for n in ("neox pipeline_a", "..")
    }
    assert len(others | {folder.as_uri()}) == 3
    assert all(Path(urlparse(uri).path).parent == tmp_path / "store" / "mlruns" for uri in others)
    # a relative or percent-encoded database path (MLflow writes them so) is the file it names; elsewhere, the default
    relative = artifact_location("sqlite:///my%20store/mlflow.db", "e")
    assert Path(unquote(urlparse(relative).path)).parent == elsewhere / "my store" / "mlruns"
    assert artifact_location("sqlite:///:memory:", "e") is None and artifact_location("http://mlflow:5000", "e") is None


def test_two_clients_creating_the_same_experiment_at_once_both_get_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # the schema, made once
    names = [f"experiment-{i}" for i in range(10)]
    start = threading.Barrier(2, timeout=60)

    def create_each() -> list[str]:
        client = MlflowClient(tracking_uri=uri)
        ids = []
        for name in names:
            start.wait()  # both look it up, find nothing and create it in the same moment
            ids.append(get_or_create_experiment(client, name))
        return ids

    with ThreadPoolExecutor(2) as pool:
        first, second = (future.result() for future in [pool.submit(create_each) for _ in range(2)])
    assert first == second and len(set(first)) == len(names)
    assert {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()} == {"Default", *names}


def test_a_tracking_uri_names_a_store_mlflow_has_or_one_an_installed_plugin_adds(tmp_path, monkeypatch):
    for uri in ("sqlite:///m.db", "postgresql+psycopg2://u@h/db", "https://mlflow.example", "/a/file/store"):
        assert checked_tracking_uri(uri) == uri
    with pytest.raises(ConfigError, match="azureml:// is not a store MLflow has"):
        checked_tracking_uri("azureml://eastus.api.azureml.ms/mlflow/v1.0")
    # a package that registers a store under MLflow's entry point, as azureml-mlflow does
    plugin = tmp_path / "azureml_mlflow-1.0.dist-info"
    plugin.mkdir()
    (plugin / "METADATA").write_text("Metadata-Version: 2.1\nName: azureml-mlflow\nVersion: 1.0\n")
    (plugin / "entry_points.txt").write_text("[mlflow.tracking_store]\nazureml = azureml_mlflow:Store\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert checked_tracking_uri("azureml://eastus.api.azureml.ms/mlflow/v1.0").startswith("azureml://")
