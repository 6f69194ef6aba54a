"""Which MLflow tracking store a command or flow uses. The order, everywhere: the command line's flag, then
MLFLOW_TRACKING_URI (what MLflow's own tools read), then the pipeline config's `train.mlflow_tracking_uri`, then
a SQLite file in the working folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT = "sqlite:///mlflow.db"
ENV = "MLFLOW_TRACKING_URI"
SQLITE = "sqlite:///"


def tracking_uri(flag: str | None = None, configured: str | None = None) -> str:
    """The tracking URI by that order, a relative SQLite path made absolute (training workers and Prefect flows
    run in other folders)."""
    uri = flag or os.environ.get(ENV) or configured or DEFAULT
    if uri.startswith(SQLITE) and not uri[len(SQLITE) :].startswith("/"):
        return SQLITE + str(Path(uri[len(SQLITE) :]).resolve())
    return uri


def get_or_create_experiment(client, name: str) -> str:
    """The id of MLflow experiment `name` in `client`'s store, created if new. In a SQLite store its artifacts go
    in `mlruns/<name>` beside the database file: MLflow's default, `./mlruns` of whichever process creates the
    experiment (a Prefect worker, a test, `neox` run from elsewhere), scatters them away from it."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = client.tracking_uri
    location = None
    if uri.startswith(SQLITE):
        location = (Path(uri[len(SQLITE) :]).parent / "mlruns" / re.sub(r"[^\w.-]", "_", name)).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as err:  # a run started at the same moment created it first
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id
