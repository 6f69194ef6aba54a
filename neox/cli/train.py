"""`neox` commands for training: train, runs, check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neox.cli.app import TRAIN, app


@app.command("train", rich_help_panel=TRAIN, short_help="Train or fine-tune with DeepSpeed on Ray Train.")
def train_command(
    config: Annotated[
        Path, typer.Argument(help="Pipeline config YAML with a `train:` section (e.g. configs/pipeline/local.yaml).")
    ],
    data: Annotated[Path | None, typer.Option(help="Tokenize stage output to train on (overrides train.data).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the stopped run of this config (same run key) from its latest checkpoint.")
    ] = False,
    allow_new_data: Annotated[
        bool,
        typer.Option(
            help="With --resume: continue the newest run of the same label and model (weights, optimizer, step) as a "
            "new run on this dataset and these settings (continued pretraining; its run.json names its origin)."
        ),
    ] = False,
    train_iters: Annotated[int | None, typer.Option(help="Override train.train_iters.")] = None,
    name: Annotated[str | None, typer.Option(help="Override train.name (the run's label).")] = None,
) -> None:
    """Train GPT-NeoX with DeepSpeed on Ray Train workers; metrics go to MLflow and the run folder, checkpoints
    every checkpoint_interval steps, final weights to <run>/final/{model,hf}. The run lives in
    <storage_path>/<run key>, the key hashing everything that changes the weights (`neox runs` lists them).
    Without train.data or --data, the config's `data:` section is prepared first (finished data stages are
    reused). Prints the run folder.

    Example: neox train configs/pipeline/local.yaml
    """
    from neox.pipeline.commands import train_from_config

    overrides = {
        k: v
        for k, v in {"data": str(data) if data else None, "train_iters": train_iters, "name": name}.items()
        if v is not None
    }
    typer.echo(train_from_config(config, overrides, resume=resume, allow_new_data=allow_new_data))


@app.command("finetune", rich_help_panel=TRAIN, short_help="Fine-tune a model; eval it beside its base; register.")
def finetune_command(
    config: Annotated[
        Path,
        typer.Argument(help="Pipeline config YAML with a `finetune:` section (e.g. configs/pipeline/finetune.yaml)."),
    ],
) -> None:
    """Run the finetune flow: the base model (finetune.base: models:/NAME@champion, a neox checkpoint or a Hugging
    Face GPT-NeoX folder) trained on finetune.instructions (prompt tokens masked; LoRA with train.lora) or on the
    data section's shards, evaluated beside its base on the same held-out data, registered as a version of
    registry.name with lineage to the base, and promoted when the gate says so. The same as
    `python -m flows.finetune CONFIG`: a Prefect flow run (local, or on PREFECT_API_URL). A rerun reuses every
    finished stage and resumes training.

    Example: neox finetune configs/pipeline/finetune.yaml
    """
    import subprocess
    import sys

    from neox.errors import ConfigError
    from neox.pipeline.check import check_pipeline_config

    cfg = check_pipeline_config(config)  # a bad config fails here, before Prefect starts
    if cfg.finetune is None:
        raise ConfigError(f"{config} has no `finetune:` section (finetune.base names the model to start from)")
    # a child process: the library never imports Prefect, the flow does
    raise typer.Exit(subprocess.call([sys.executable, "-m", "flows.finetune", str(config)]))


@app.command("runs", rich_help_panel=TRAIN, short_help="List the training runs and their status.")
def runs_command(
    config: Annotated[
        Path | None, typer.Argument(help="Pipeline config YAML whose train.storage_path to list (or --storage-path).")
    ] = None,
    storage_path: Annotated[
        str | None, typer.Option(help="Where the runs live (a folder or s3://bucket/prefix).")
    ] = None,
) -> None:
    """List the training runs under a storage path: key, label, status (finished, stopped, new, or legacy for a
    run from before runs were keyed, never reused), steps, dataset key and the final checkpoint, which is what the
    evaluate-and-promote deployment's `checkpoint` parameter takes.

    Example: neox runs configs/pipeline/local.yaml
    """
    from neox.errors import ConfigError
    from neox.train.runs import list_runs, runs_table

    if (config is None) == (storage_path is None):
        raise ConfigError("give a pipeline config or --storage-path (one of them)")
    if config is not None:
        from neox.train.config import load_train_config

        storage_path = load_train_config(config).storage_path
    typer.echo(runs_table(list_runs(storage_path)))


@app.command("check", rich_help_panel=TRAIN, short_help="Validate a pipeline config without running anything.")
def check_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML (e.g. configs/pipeline/pile-pythia-160m.yaml).")],
) -> None:
    """Validate a whole pipeline config (work_root, data, train with its model YAML, eval, registry, retrain)
    without running anything; the flows run the same check before their first stage.

    Example: neox check configs/pipeline/local.yaml
    """
    from neox.pipeline.check import describe

    typer.echo(describe(config))


@app.command("plan", rich_help_panel=TRAIN, short_help="Per-GPU memory of each parallel layout; picks one.")
def plan_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML with a `train:` section.")],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs the run gets (its num_workers).")],
    gpu_memory: Annotated[float, typer.Option(min=1, help="GiB of memory per GPU (40 or 80 for an A100).")] = 80,
    vocab_size: Annotated[
        int, typer.Option(min=1, help="The tokenizer's vocabulary (padded as the model YAML says).")
    ] = 50277,
) -> None:
    """Per-GPU memory of every model-parallel layout of the config's run on GPUS GPUs (tensor x pipeline x data
    parallel, ZeRO stage), at its global batch, micro batch, sequence length and precision: weights, gradients,
    optimizer state, activations without and with activation checkpointing, communication buffers. Layouts that
    fit in 90% of --gpu-memory come first, the least model parallelism first; the first is recommended.

    Example: neox plan configs/pipeline/pile-neox-20b.yaml --gpus 96 --gpu-memory 40
    """
    from neox.model.config import load_model_config
    from neox.train.config import load_train_config
    from neox.train.plan import plan, recommendation, table

    train = load_train_config(config)
    model, _ = load_model_config(*train.model, vocab_size=vocab_size)
    planned = plan(model, train, gpus, gpu_memory)
    typer.echo(table(planned, train, gpu_memory))
    typer.echo(recommendation(planned, train))


@app.command("reshard", rich_help_panel=TRAIN, short_help="Whole weights from a checkpoint of any parallel layout.")
def reshard_command(
    run: Annotated[
        Path, typer.Argument(help="A run folder (its newest checkpoint is read) or one of its checkpoints.")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the whole model (a neox model checkpoint folder).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing checkpoint at --out.")] = False,
) -> None:
    """Whole weights from a training checkpoint of any layout (data, tensor or pipeline parallel, or a mix), read
    and written one tensor at a time, as a neox model checkpoint with the run's tokenizer: for `neox export-hf`,
    evaluation, or `train.init_from` of a new run in another layout. Prints the checkpoint it read.

    Example: neox reshard work/train/<run key> --out work/models/<run key>-step-1000
    """
    from neox.train.reshard import reshard

    typer.echo(reshard(run, out, overwrite=overwrite))
