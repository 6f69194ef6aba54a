"""What every stage task reports: whether the stage ran or reused its verified output (Prefect's log), and the
output's manifest stats as a Prefect table artifact for the UI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from neox.pipeline.stage import read_manifest


def report_stage(stage: str, output: str | Path, started: float, extra: dict[str, Any] | None = None) -> None:
    manifest = read_manifest(output)
    reused = manifest["started_at"] < started
    get_run_logger().info("%s: %s %s", stage, "reused the verified output" if reused else "wrote", output)
    stats = {**manifest["stats"], **(extra or {})}
    rows = [
        {"stat": k, "value": v if isinstance(v, (int, float, str)) else json.dumps(v)[:500]} for k, v in stats.items()
    ]
    create_table_artifact(rows, key=stage, description=f"{stage} {'(reused) ' if reused else ''}→ {output}")
