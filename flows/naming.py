"""Flow-run names that say what a run works on (Prefect's default is two random words): the flow, the pipeline
config's file name, and the dataset or checkpoint a subflow was given, e.g. `train · local · data 3f2a…`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import runtime


def run_name(flow: str) -> Callable[[], str]:
    def name() -> str:
        parameters = runtime.flow_run.parameters
        parts = [flow, Path(parameters.get("config") or "?").stem]
        if parameters.get("tokenized"):
            parts.append(f"data {Path(parameters['tokenized']).name}")
        if parameters.get("checkpoint"):
            checkpoint = Path(parameters["checkpoint"])
            parts.append(
                f"model {checkpoint.parent.parent.name if checkpoint.parent.name == 'final' else checkpoint.name}"
            )
        return " · ".join(parts)

    return name


def config_tags(config: str) -> tuple[str, ...]:
    """Tags of a flow run started from the command line (`make demo`): the pipeline and its config."""
    return ("neox-pipeline", f"config:{Path(config).stem}")
