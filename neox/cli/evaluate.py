"""`neox` commands for evaluation and the registry: eval-data, eval, register, promote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from neox.cli.app import EVAL, TrackingOption, WorkRootOption, app

if TYPE_CHECKING:
    from neox.registry.rule import PromotionRule


@app.command("eval-data", rich_help_panel=EVAL, short_help="Held-out eval data from documents training left out.")
def eval_data_command(
    dataset: Annotated[Path, typer.Argument(help="A tokenize stage output (the dataset the model trained on).")],
    work_root: WorkRootOption = Path("work"),
    split: Annotated[str, typer.Option(help="The training run's train/valid/test split weights.")] = "969,30,1",
    part: Annotated[Literal["test", "valid"], typer.Option(help="Which part of the split to build from.")] = "test",
    max_documents: Annotated[int, typer.Option(help="Documents to take from that part at most.")] = 500,
    lastword_chars: Annotated[
        int, typer.Option(help="Characters of each last-word passage before its target word.")
    ] = 400,
) -> None:
    """Build the offline lm-eval task data (held-out perplexity and LAMBADA-style last word) from the documents
    the training split left out. Prints the output folder for `neox eval --eval-data`.

    Example: neox eval-data work/tokenize/<key> --split 949,50,1
    """
    from neox.eval.config import EvalDataConfig
    from neox.eval.data import eval_data_stage
    from neox.pipeline.configfile import parse

    cfg = parse(
        EvalDataConfig, dict(split=split, part=part, max_documents=max_documents, lastword_chars=lastword_chars)
    )
    typer.echo(str(eval_data_stage(dataset, work_root, cfg).path))


@app.command("eval", rich_help_panel=EVAL, short_help="Evaluate a checkpoint with lm-eval; record it in MLflow.")
def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="A neox checkpoint folder, e.g. <run>/final/model.")],
    eval_data: Annotated[
        Path | None, typer.Option(help="The eval-data stage output (needed by the offline tasks).")
    ] = None,
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma-separated tasks: neox_heldout, neox_lastword, neox_response (fine-tuning data), and/or "
            "lm-eval task names (pythia: the Pythia suite)."
        ),
    ] = "neox_heldout,neox_lastword",
    model: Annotated[
        Literal["neox", "hf"], typer.Option(help="neox (our adapter) or hf (lm-eval's own model on <run>/final/hf).")
    ] = "neox",
    batch_size: Annotated[int, typer.Option(help="Requests per forward pass.")] = 16,
    device: Annotated[
        Literal["cpu", "cuda"], typer.Option(help="Where to run (CUDA_VISIBLE_DEVICES picks the GPU).")
    ] = "cpu",
    dtype: Annotated[
        Literal["float32", "bfloat16", "float16"], typer.Option(help="The weights' dtype; bfloat16 halves the memory.")
    ] = "float32",
    limit: Annotated[int | None, typer.Option(help="Examples per task (default: whole tasks).")] = None,
    work_root: WorkRootOption = Path("work"),
    mlflow_tracking_uri: TrackingOption = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the eval run.")] = "neox-pipeline",
) -> None:
    """Evaluate a checkpoint with lm-eval; print the metrics table, log them (with lm-eval's results JSON and the
    output's hashes, which `neox register` checks) to a new MLflow run, and write both into the eval stage output,
    whose folder is printed last. An earlier output is reused only when this tracking store holds its run.

    Example: neox eval work/train/demo/final/model --eval-data work/eval-data/<key>
    """
    from neox.eval.config import EvalConfig
    from neox.eval.record import evaluate_and_record
    from neox.eval.run import EVAL_METRICS_FILE, metrics_table, task_names
    from neox.pipeline.configfile import parse
    from neox.runtime.tracking_uri import tracking_uri

    options = dict(tasks=task_names(tasks), batch_size=batch_size, device=device, limit=limit, model=model, dtype=dtype)
    cfg = parse(EvalConfig, options)
    tracking = tracking_uri(mlflow_tracking_uri)
    result, run_id = evaluate_and_record(checkpoint, eval_data, work_root, cfg, tracking, experiment)
    typer.echo(metrics_table(json.loads((result.path / EVAL_METRICS_FILE).read_text())))
    typer.echo(f"MLflow run {run_id} in experiment {experiment}")
    typer.echo(str(result.path))


@app.command("register", rich_help_panel=EVAL, short_help="Register an evaluated checkpoint in MLflow.")
def register_command(
    eval_output: Annotated[Path, typer.Argument(help="An eval stage output (printed by `neox eval`).")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "neox-tiny",
    work_root: Annotated[Path | None, typer.Option(help="Where the data stages ran, for the lineage tags.")] = Path(
        "work"
    ),
    mlflow_tracking_uri: TrackingOption = None,
    promote: Annotated[bool, typer.Option(help="Run the promotion gate on the new version.")] = True,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment of the eval run the version is logged in.")
    ] = "neox-pipeline",
    config: Annotated[
        Path | None, typer.Option(help="Pipeline config whose registry.rule is the promotion rule.")
    ] = None,
) -> None:
    """Register the evaluated checkpoint as a new MLflow model version (lineage in its tags), then run the
    promotion gate: alias `candidate`, and `champion` if its metrics beat the current champion's.

    Example: neox register work/eval/<key> --name neox-tiny
    """
    from neox.pipeline.commands import promotion_rule_from_config, tracking_uri_from_config
    from neox.registry.mlflow_registry import register

    rule = promotion_rule_from_config(config)  # a bad rule is reported before anything is registered
    tracking = tracking_uri_from_config(mlflow_tracking_uri, config)
    version = register(eval_output, name, tracking, work_root, experiment)
    typer.echo(f"{name} version {version}")
    if promote:
        _promote(name, version, rule, tracking)


@app.command("promote", rich_help_panel=EVAL, short_help="Make a version champion if the promotion rule agrees.")
def promote_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to consider for champion.")],
    mlflow_tracking_uri: TrackingOption = None,
    config: Annotated[
        Path | None, typer.Option(help="Pipeline config whose registry.rule is the promotion rule.")
    ] = None,
) -> None:
    """Run the promotion gate on a registered version (idempotent: safe to repeat).

    Example: neox promote neox-tiny 3 --config configs/pipeline/local.yaml
    """
    from neox.pipeline.commands import promotion_rule_from_config, tracking_uri_from_config

    rule = promotion_rule_from_config(config)
    _promote(name, version, rule, tracking_uri_from_config(mlflow_tracking_uri, config))


def _promote(name: str, version: str, rule: PromotionRule, tracking_uri: str) -> None:
    from neox.registry.mlflow_registry import promote

    decision = promote(name, version, rule, tracking_uri)
    verdict = "champion" if decision.promote else "not promoted"
    typer.echo(f"{name} version {version}: {verdict} ({'; '.join(decision.reasons)})")


@app.command("serve", rich_help_panel=EVAL, short_help="Serve a registered model over HTTP on this machine.")
def serve_command(
    model_uri: Annotated[
        str, typer.Argument(help="models:/NAME@champion, models:/NAME/VERSION, or a logged model's folder.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5001,
    workers: Annotated[int, typer.Option(min=1, help="Server processes, each holding the model.")] = 1,
    mlflow_tracking_uri: TrackingOption = None,
) -> None:
    """Serve a registered version with MLflow's scoring server (POST /invocations, GET /ping), started with this
    environment's Python, so it needs nothing on PATH. Requests take a list of prompts and optional params:
    max_new_tokens, temperature (0 is greedy), top_k, top_p, seed, stop; a bad value is answered 400.

    Example: neox serve models:/neox-tiny@champion --port 5001
    """
    from neox.registry.serve import serve
    from neox.runtime.tracking_uri import tracking_uri

    raise typer.Exit(serve(model_uri, tracking_uri(mlflow_tracking_uri, None), host, port, workers))
