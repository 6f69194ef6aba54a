"""An eval output's record in MLflow: what registration and the promotion gate trust instead of the files.

Eval outputs live in the work root, which more than the pipeline can write. So the eval stage logs its output to
MLflow as soon as it has computed it, and the run records the sha256 of the output's manifest.json, results.json
and metrics.json, and a digest of every file of the checkpoint it scored and of its Hugging Face export (what
registering it uploads). Registration and the gate read the metrics from that run, and refuse
an output whose files no longer hash to what the run recorded, or whose checkpoint changed. An output with no run
(hand-written, or planted under a key the stage would compute) is never logged from its files: the eval stage
redoes it, and records a new output before it lets go of the key's lock, so that no other run finds it unrecorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from neox.errors import DataError, MissingInput, RunStateError
from neox.eval.config import EvalConfig
from neox.eval.run import CHECKPOINT_PATH_TAG, EVAL_METRICS_FILE, RESULTS_FILE, STAGE, eval_stage
from neox.model.digest import checkpoint_digest
from neox.pipeline.layout import MLFLOW_RUN_FILE, WEIGHTS_FILE, run_of
from neox.pipeline.stage import MANIFEST, StageResult, read_manifest, sha256_file
from neox.runtime.run_context import source_tags
from neox.runtime.tracking_uri import get_or_create_experiment

EVAL_KEY_TAG = "neox.eval_key"
OUTPUT_TAG = "neox.eval_output"  # the output folder the run recorded
TRAIN_RUN_TAG = "neox.train_run_id"  # the training run whose final weights were scored
COMPLETE_TAG = "neox.eval_recorded"  # set last, once metrics, params and results are all logged
CHECKPOINT_SHA_TAG = "neox.checkpoint_sha256"  # every file of the checkpoint and its export (checkpoint_digest)
RECORDED_FILES = (MANIFEST, RESULTS_FILE, EVAL_METRICS_FILE)


def file_tag(name: str) -> str:
    return f"neox.sha256.{name}"


def evaluate_and_record(
    checkpoint: str | Path,
    eval_data: str | Path | None,
    work_root: str | Path,
    cfg: EvalConfig,
    tracking_uri: str,
    experiment: str = "neox-pipeline",
) -> tuple[StageResult, str]:
    """The eval stage and its MLflow run: a new output is recorded before its lock is let go, and an earlier one
    is reused only when this tracking store holds a record its files still match."""
    result = eval_stage(
        checkpoint,
        eval_data,
        work_root,
        cfg,
        reuse_if=lambda out: intact(out, tracking_uri, experiment),
        on_publish=lambda out: log_eval(out, tracking_uri, experiment),
    )
    return result, find_eval_run(result.path, tracking_uri, experiment).info.run_id


def find_eval_run(output: str | Path, tracking_uri: str, experiment: str = "neox-pipeline", any_manifest=False):
    """The complete MLflow record of this eval output as it is now (its stage key, its folder, its manifest's
    sha256), or None. The same key in another folder, or redone in this one, is another output: its manifest has
    timings (and a checkpoint path) of its own. `any_manifest`: the newest record of this folder whatever its
    manifest (to say what changed)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    output = Path(output)
    conditions = {
        EVAL_KEY_TAG: read_manifest(output)["key"],
        OUTPUT_TAG: str(output.resolve()),
        COMPLETE_TAG: "true",
        **({} if any_manifest else {file_tag(MANIFEST): sha256_file(output / MANIFEST)}),
    }
    query = " and ".join(f"tags.`{tag}` = {quoted(value)}" for tag, value in conditions.items())
    runs = client.search_runs([found.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def quoted(value: str) -> str:
    """A string literal of MLflow's search syntax (a work root's path may hold a quote)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def intact(output: Path, tracking_uri: str, experiment: str) -> bool:
    """Whether this tracking store recorded the eval output and its files still hash to what it recorded."""
    run = find_eval_run(output, tracking_uri, experiment)
    return run is not None and not changed_files(output, run)


def changed_files(output: Path, run) -> list[tuple[str, str, str | None]]:
    """(file, sha256 now, sha256 recorded) of each recorded file of the output that differs from its record."""
    changed = []
    for name in RECORDED_FILES:
        if not (output / name).is_file():
            raise MissingInput(f"{output / name} is missing: the eval output is damaged")
        actual, recorded = sha256_file(output / name), run.data.tags.get(file_tag(name))
        if actual != recorded:
            changed.append((name, actual, recorded))
    return changed


def log_eval(output: str | Path, tracking_uri: str, experiment: str = "neox-pipeline") -> str:
    """The MLflow run holding an eval output's metrics, params, results JSON and hashes: found again if this output
    was logged before, else created. Called on an output the eval stage has just published (its `on_publish`)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    existing = find_eval_run(output, tracking_uri, experiment)
    if existing is not None:
        return existing.info.run_id
    output, manifest = Path(output), read_manifest(output)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment)
    checkpoint = Path(manifest["stats"]["checkpoint"])
    run = client.create_run(
        experiment_id,
        run_name=f"eval {(run_of(checkpoint) or checkpoint).name}",
        tags={
            **source_tags(),
            **training_link(client, checkpoint, experiment_id),
            "neox.stage": STAGE,
            EVAL_KEY_TAG: manifest["key"],
            OUTPUT_TAG: str(output.resolve()),
            CHECKPOINT_PATH_TAG: str(checkpoint),
            CHECKPOINT_SHA_TAG: manifest["inputs"]["checkpoint"],
            **{file_tag(name): sha256_file(output / name) for name in RECORDED_FILES},
        },
    )
    now = int(time.time() * 1000)
    params = [
        Param(f"eval.{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v))
        for k, v in sorted(manifest["config"].items())
    ]
    metrics = [Metric(k, v, now, 0) for k, v in manifest["stats"]["metrics"].items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.log_artifact(run.info.run_id, str(output / RESULTS_FILE))
    client.set_tag(run.info.run_id, COMPLETE_TAG, "true")  # last: a record cut short is never trusted
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def training_link(client, checkpoint: Path, experiment_id: str) -> dict[str, str]:
    """Tags tying an eval run to the training run whose final weights it scored: `neox.train_run_id`, and
    `mlflow.parentRunId` (the eval shows nested under its training run) when both are in this experiment."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run = run_of(checkpoint)
    if run is None or not (run / MLFLOW_RUN_FILE).is_file():
        return {}
    train_run_id = (run / MLFLOW_RUN_FILE).read_text().strip()
    try:
        same_experiment = client.get_run(train_run_id).info.experiment_id == experiment_id
    except MlflowException:  # logged to another tracking store
        return {TRAIN_RUN_TAG: train_run_id}
    return {TRAIN_RUN_TAG: train_run_id, **({MLFLOW_PARENT_RUN_ID: train_run_id} if same_experiment else {})}


def verified_eval_run(
    output: str | Path, tracking_uri: str, experiment: str = "neox-pipeline", snapshot: Path | None = None
) -> Any:
    """The eval output's MLflow run, after checking the output's files and its checkpoint's files against the
    hashes the run recorded. Raises a one-line error naming what does not match. With `snapshot`, the checkpoint
    and its export are copied there as they are checked (`checkpoint_digest`): what registering uploads."""
    output = Path(output)
    manifest = read_manifest(output)
    if manifest.get("stage") != STAGE:
        raise DataError(f"{output} is a {manifest.get('stage')} stage output, not an eval output (neox eval)")
    run = find_eval_run(output, tracking_uri, experiment) or find_eval_run(output, tracking_uri, experiment, True)
    if run is None:
        raise RunStateError(
            f"{output} has no eval run in {tracking_uri} (experiment {experiment}): only an output the eval stage "
            "logged can be registered. Run `neox eval` on the checkpoint with this --mlflow-tracking-uri."
        )
    changed = changed_files(output, run)
    if changed:
        name, actual, expected = changed[0]
        raise DataError(
            f"{output / name} changed after it was evaluated: sha256 {actual}, eval run {run.info.run_id} "
            f"recorded {expected}. Refusing it; `neox eval` on the checkpoint evaluates it again."
        )
    recorded = run.data.tags
    checkpoint = Path(recorded[CHECKPOINT_PATH_TAG])
    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise RunStateError(f"the checkpoint {output} evaluated, {checkpoint}, is gone: nothing to register")
    if checkpoint_digest(checkpoint, snapshot) != recorded[CHECKPOINT_SHA_TAG]:
        raise DataError(
            f"the checkpoint {checkpoint} (or its Hugging Face export) changed after it was evaluated (eval run "
            f"{run.info.run_id}): refusing it; `neox eval` on it evaluates it as it is now"
        )
    return run
