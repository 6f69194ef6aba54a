"""The `neox` Typer app and the options several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="neox",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# the panels `neox -h` groups its commands in
DATA, TRAIN, EVAL, CLUSTER, TOOLS = "Data", "Train", "Eval & registry", "Cluster", "Tools"


def print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        typer.echo(f"neox-pipeline {version('neox-pipeline')}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """neox-pipeline: train, evaluate and convert GPT-NeoX language models. `neox COMMAND -h` explains one."""


WorkRootOption = Annotated[
    Path,
    typer.Option(file_okay=False, help="Root of the content-addressed stage outputs (<work-root>/<stage>/<key>/)."),
]
WorkersOption = Annotated[
    int | None, typer.Option(min=1, help="Tasks run at once, a core each (default: every CPU Ray has).")
]
ChunkOption = Annotated[
    int,
    typer.Option(
        "--chunk-mb",
        min=1,
        help="Megabytes of (decompressed) text one task reads: a bigger shard is cut into several tasks. "
        "Does not change the output.",
    ),
]
RayOption = Annotated[str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking URI: a sqlite:/// file or an http(s):// server (default: MLFLOW_TRACKING_URI, else the "
        "config's train.mlflow_tracking_uri, else sqlite:///mlflow.db)."
    ),
]
