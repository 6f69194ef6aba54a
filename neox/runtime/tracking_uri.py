"""Which MLflow tracking store a command or flow uses. The order, everywhere: the command line's flag, then
MLFLOW_TRACKING_URI (what MLflow's own tools read), then the pipeline config's `train.mlflow_tracking_uri`, then
a SQLite file in the working folder."""

from __future__ import annotations

import os
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
