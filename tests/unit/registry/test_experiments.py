"""Where an MLflow experiment we create keeps its artifacts, and creating one from two places at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from mlflow import MlflowClient

from neox.runtime.tracking_uri import get_or_create_experiment


def test_in_a_sqlite_store_artifacts_go_beside_the_database_wherever_the_command_runs(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's default would put them in ./mlruns here
    (tmp_path / "store").mkdir()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    made = get_or_create_experiment(client, "neox pipeline/a")
    assert get_or_create_experiment(client, "neox pipeline/a") == made  # found again, not made twice
    location = client.get_experiment(made).artifact_location
    assert location == (tmp_path / "store" / "mlruns" / "neox_pipeline_a").as_uri()
    run = client.create_run(made)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert (tmp_path / "store" / "mlruns" / "neox_pipeline_a" / run.info.run_id / "artifacts" / "note.txt").exists()
    assert not list(elsewhere.iterdir())


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
