"""Which MLflow tracking store a command or flow uses. The order, everywhere: the command line's flag, then
MLFLOW_TRACKING_URI (what MLflow's own tools read), then the pipeline config's `train.mlflow_tracking_uri`, then
a SQLite file in the working folder. And the experiments we create in a store, their artifacts kept beside a
SQLite store's file."""

from __future__ import annotations

import hashlib
import os
import re
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import unquote

from neox.errors import ConfigError

DEFAULT = "sqlite:///mlflow.db"
ENV = "MLFLOW_TRACKING_URI"
SQLITE = "sqlite:///"
# the stores MLflow ships (a database by its SQLAlchemy dialect, `postgresql+psycopg2://` too); a plain path is a
# file store
SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql", "file", "http", "https", "databricks", "databricks-uc"})


def plugin_schemes() -> frozenset[str]:
    """The schemes of tracking stores installed packages add (azureml://, say), read without importing MLflow."""
    return frozenset(point.name for point in entry_points(group="mlflow.tracking_store"))


def checked_tracking_uri(uri: str) -> str:
    """`uri`, or a ConfigError if it names no store MLflow has (else MLflow fails at the first metric or at
    registration, after training)."""
    scheme, sep, _ = uri.partition("://")
    base = scheme.split("+")[0].lower()
    if sep and base not in SCHEMES and base not in plugin_schemes():  # the plugins' only when needed: a scan
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES | plugin_schemes()))
        raise ConfigError(f"MLflow tracking URI {uri}: {scheme}:// is not a store MLflow has ({known})")
    return uri


def tracking_uri(flag: str | None = None, configured: str | None = None) -> str:
    """The tracking URI by that order, a relative SQLite path made absolute (training workers and Prefect flows
    run in other folders)."""
    uri = checked_tracking_uri(flag or os.environ.get(ENV) or configured or DEFAULT)
    if uri.startswith(SQLITE) and not uri[len(SQLITE) :].startswith("/"):
        return SQLITE + str(Path(uri[len(SQLITE) :]).resolve())
    return uri


def get_or_create_experiment(client, name: str) -> str:
    """The id of MLflow experiment `name` in `client`'s store, created if new. In a SQLite store its artifacts go
    in `mlruns/<name>-<hash>` beside the database file: MLflow's default, `./mlruns` of whichever process creates
    the experiment (a Prefect worker, a test, `neox` run from elsewhere), scatters them away from it."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
    except MlflowException as err:  # a run started at the same moment created it first
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts (None elsewhere: the store's own default). The
    folder is named by the experiment, made safe for a path, with a hash of it so that no two names share one."""
    if not uri.startswith(SQLITE):
        return None
    database = unquote(uri[len(SQLITE) :].split("?", 1)[0])  # MLflow's own SQLite URIs are percent-encoded
    if database in ("", ":memory:"):
        return None
    safe, digest = re.sub(r"[^\w-]", "_", experiment)[:64], hashlib.sha256(experiment.encode()).hexdigest()[:8]
    folder = f"{safe}-{digest}"
    return (Path(database).resolve().parent / "mlruns" / folder).as_uri()
