"""The standard MLflow tags of every run we create (`mlflow.user`, `mlflow.source.name`, `mlflow.source.type`,
`mlflow.source.git.commit`): runs are made with the low-level client, which sets none of them."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """The commit of the neox code that runs ("unknown" outside a git checkout, e.g. from a wheel)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags() -> dict[str, str]:
    """The tags `mlflow.start_run` would set here, with the commit of our code: MLflow looks for a commit only
    beside the entry script, and `neox` or a Prefect worker does not lie in the repository."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = resolve_tags()
    commit = git_commit()
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags
