"""The one wrapper every stage task ends with: log whether the stage ran or reused its verified output, publish the
output's manifest stats as a Prefect table artifact, and finish the task run in a state that says which: `Cached`
for a reused output (so the UI shows it as Prefect shows its own cache hits), `Completed` otherwise. Reuse is our
manifest check's decision (sha256 of every file), never Prefect's cache, which cannot see the files; the state
carries the output's path, which the flow takes with `.result()`."""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, State

from neox.pipeline.stage import StageResult, read_manifest

# Stage tasks keep no Prefect result on disk: the output's path travels in memory, the output itself is ours.
STAGE_TASK = {"persist_result": False}


def stage_state(stage: str, result: StageResult, extra: dict[str, Any] | None = None) -> State:
    manifest = read_manifest(result.path)
    get_run_logger().info("%s: %s %s", stage, "reused the verified output" if result.reused else "wrote", result.path)
    stats = {**manifest["stats"], **(extra or {})}
    rows = [
        {"stat": k, "value": v if isinstance(v, (int, float, str)) else json.dumps(v)[:500]} for k, v in stats.items()
    ]
    reused = "(reused) " if result.reused else ""
    create_table_artifact(rows, key=stage, description=f"{stage} {reused}→ {result.path}")
    if result.reused:
        return Completed(name="Cached", message=f"reused the verified output {result.path}", data=str(result.path))
    return Completed(message=f"wrote {result.path}", data=str(result.path))
