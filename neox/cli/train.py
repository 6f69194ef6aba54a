"""`neox` commands for training: train, check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neox.cli.app import app


@app.command("train")
def train_command(
    config: Annotated[
        Path, typer.Argument(help="Pipeline config YAML with a `train:` section (e.g. configs/pipeline/local.yaml).")
    ],
    data: Annotated[Path | None, typer.Option(help="Tokenize stage output to train on (overrides train.data).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the stopped run of the same name from its latest checkpoint.")
    ] = False,
    allow_new_data: Annotated[
        bool, typer.Option(help="On --resume, accept a different dataset (continued pretraining).")
    ] = False,
    train_iters: Annotated[int | None, typer.Option(help="Override train.train_iters.")] = None,
    name: Annotated[str | None, typer.Option(help="Override train.name (the run's folder under storage_path).")] = None,
) -> None:
    """Train GPT-NeoX with DeepSpeed on Ray Train workers; metrics go to MLflow and the run folder, checkpoints
    every checkpoint_interval steps, final weights to <run>/final/{model,hf}. Without train.data or --data,
    the config's `data:` section is prepared first (finished data stages are reused). Prints the run folder.

    Example: neox train configs/pipeline/local.yaml
    """
    from neox.pipeline.commands import train_from_config

    overrides = {
        k: v
        for k, v in {"data": str(data) if data else None, "train_iters": train_iters, "name": name}.items()
        if v is not None
    }
    typer.echo(train_from_config(config, overrides, resume=resume, allow_new_data=allow_new_data))


@app.command("check")
def check_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML (e.g. configs/pipeline/pile-pythia-160m.yaml).")],
) -> None:
    """Validate a whole pipeline config (work_root, data, train with its model YAML, eval, registry, retrain)
    without running anything; the flows run the same check before their first stage.

    Example: neox check configs/pipeline/local.yaml
    """
    from neox.pipeline.check import describe

    typer.echo(describe(config))
