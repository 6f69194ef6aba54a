"""The `neox` Typer app and the options several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="neox",
    help="neox-pipeline: train, evaluate and convert GPT-NeoX language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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
TrackingOption = Annotated[str, typer.Option(help="MLflow tracking URI (a sqlite:/// file or an http:// server).")]
