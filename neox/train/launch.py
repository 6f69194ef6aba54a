"""The training stage's driver: plan the run (its key and folder), open the MLflow run, and hand the per-worker
loop to Ray Train's TorchTrainer (one worker per GPU, or per CPU slot), which restarts workers from the latest
checkpoint when one dies. A finished run of the same key is reused, a stopped one resumed; `--allow-new-data`
continues a run of the same config on another dataset as a new run (continued pretraining)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from neox.data.tokenize import data_prefix, label_prefix, named_split_prefixes, tokenized_stats
from neox.errors import NeoxError, RunStateError
from neox.pipeline.layout import (
    CHAT_TEMPLATE_FILE,
    CONFIG_FILE,
    DATA_FILE,
    DIVERGED_FILE,
    FINAL_MODEL,
    INDEX_CACHE_DIR,
    RUN_FILE,
    TOKENIZER_FILE,
    TRAIN_METRICS_FILE,
)
from neox.pipeline.stage import MANIFEST, sha256_file
from neox.runtime.ray_cluster import ensure_ray, on_cluster, refuse_beyond_local
from neox.train.checkpointing import check_compatible, latest_state, newest_checkpoint_name
from neox.train.config import TrainConfig
from neox.train.identity import differences
from neox.train.loop import train_loop_per_worker
from neox.train.runs import RunInfo, RunPlan, list_runs, plan_run
from neox.train.tracking import open_mlflow_run


def train(cfg: TrainConfig, resume: bool = False, allow_new_data: bool = False) -> str:
    """Train the config's run; returns where it lives (its folder, or s3://… URI): checkpoints, metrics.jsonl,
    final/model and final/hf. Without `resume` a run that already has checkpoints is refused."""
    plan = plan_run(cfg)
    state = latest_state(plan.storage)
    if state is not None and not resume:
        raise RunStateError(
            f"{plan.storage.uri} already holds this run (step {state['step']} of {cfg.train_iters}): "
            "pass --resume to continue it"
        )
    if state is not None or not resume:
        return launch(plan, resume=state is not None, allow_new_data=allow_new_data)
    earlier = continuation_of(plan)  # this config already continued another run: go on with that run
    if earlier is not None:
        return earlier.storage.uri if finished(earlier) else launch(earlier, resume=True, allow_new_data=True)
    plan, start = continued_run(plan, allow_new_data)
    return launch(plan, initial_checkpoint=start, allow_new_data=True)


def train_or_resume(cfg: TrainConfig, plan: RunPlan | None = None) -> tuple[str, str]:
    """What a pipeline rerun wants: (run location, what happened). A finished run of this key is reused, a
    stopped one resumes from its latest checkpoint, anything else starts fresh. `plan`: `plan_run(cfg)`, when the
    caller made it already (to watch the run's folder)."""
    plan = plan or plan_run(cfg)
    if latest_state(plan.storage) is None:
        return launch(plan), "trained"
    if finished(plan):
        return plan.storage.uri, "reused"
    return launch(plan, resume=True), "resumed"


def worker_env(cfg: TrainConfig) -> dict[str, str]:
    """The environment of every training worker: `train.env`, over our defaults. Ray Train's print patch sends
    each print to its logger as well as to stdout (every metrics line reached the console twice). On the CPU,
    DeepSpeed warns that it falls back to the CPU unless told it is meant to, and torch.compile's pool of compile
    processes is held to the worker's own CPUs: by default every worker starts one per core of the machine."""
    on_cpu = {"DS_ACCELERATOR": "cpu", "TORCHINDUCTOR_COMPILE_THREADS": str(cfg.cpus_per_worker)}
    return {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **({} if cfg.use_gpu else on_cpu), **cfg.env}


def finished(plan: RunPlan) -> bool:
    state = latest_state(plan.storage) or {}
    return (
        state.get("step", 0) >= plan.cfg.train_iters and plan.storage.read_text(*FINAL_MODEL, CONFIG_FILE) is not None
    )


# A continued run restores the optimizer and schedule state of the run it continues: lr, betas, eps and weight
# decay come back with it, and the checkpoint's layout fixes the workers, ZeRO stage and precision. Only the data
# and the schedule's length and shape (its lambda is computed from the config) can change.
CONTINUABLE = frozenset({"data", "train.train_iters", "train.lr_decay_iters", "train.warmup", "train.min_lr"})
# How the weights and optimizer state are cut over the workers: a checkpoint loads only into its own layout.
LAYOUT = frozenset({"train.num_workers", "train.model_parallel_size", "train.pipe_parallel_size", "train.zero_stage"})


def continuation_of(plan: RunPlan) -> RunPlan | None:
    """The run an earlier `--resume --allow-new-data` of this very config started, if any (its key also holds
    the run it continued, which this config alone does not say)."""
    for run in labelled_runs(plan):
        if differences(plan.identity, run.record["identity"]) == ["continued_from"]:
            return plan_run(plan.cfg, continued_from=run.record["identity"]["continued_from"])
    return None


def labelled_runs(plan: RunPlan) -> list[RunInfo]:
    """The keyed runs of this config's label that have a checkpoint, newest first."""
    runs = list_runs(plan.cfg.storage_path)
    return [r for r in runs if r.record and r.label == plan.cfg.name and newest_checkpoint_name(r.storage)]


def continued_run(plan: RunPlan, allow_new_data: bool) -> tuple[RunPlan, str]:
    """`--resume` with no run of this key: with `--allow-new-data`, the newest run of the same label and model is
    continued (weights, optimizer, schedule position) as a new run on this dataset, and on a longer or reshaped
    schedule; otherwise an error saying what differs. Returns the new run's plan and its starting checkpoint."""
    labelled = labelled_runs(plan)
    if not labelled:
        raise RunStateError(f"--resume: no run labelled {plan.cfg.name!r} under {plan.cfg.storage_path} to continue")
    same_model = [r for r in labelled if r.record["identity"]["model"] == plan.identity["model"]]
    if not same_model:
        changed = differences(plan.identity, labelled[0].record["identity"])
        model = ", ".join(c.removeprefix("model.") for c in changed if c.startswith("model."))
        raise RunStateError(
            f"--resume: the checkpoint's model differs ({model}) in the run labelled {plan.cfg.name!r} "
            f"({labelled[0].key}); start a new run without --resume"
        )
    previous = same_model[0]
    changed = {c for c in differences(plan.identity, previous.record["identity"]) if c != "continued_from"}
    if not allow_new_data and "data" in changed:
        raise RunStateError(
            f"--resume: the run labelled {plan.cfg.name!r} ({previous.key}) was trained on another dataset "
            f"({previous.data_key} vs {plan.identity['data']}): pass --allow-new-data to continue it on this one"
        )
    if changed & LAYOUT:
        layout = ", ".join(sorted(c.removeprefix("train.") for c in changed & LAYOUT))
        exported = previous.storage.read_text(*FINAL_MODEL, CONFIG_FILE) is not None
        way_on = (
            f"or start a new run from its whole weights in this one: train.init_from: {previous.storage.uri}/"
            + "/".join(FINAL_MODEL)
            if exported
            else f"or make its newest checkpoint whole (`neox reshard {previous.storage.uri} --out DIR`) and start a "
            "new run from it in this one (train.init_from: DIR)"
        )
        raise RunStateError(
            f"--resume: the run labelled {plan.cfg.name!r} ({previous.key}) was trained in another layout ({layout}), "
            f"and its checkpoints hold weights and optimizer state cut for that layout. Finish it in its own layout, "
            + way_on
        )
    if not allow_new_data or changed - CONTINUABLE:
        raise RunStateError(
            f"--resume: the run labelled {plan.cfg.name!r} ({previous.key}) differs in {', '.join(sorted(changed))}; "
            f"a continued run keeps its optimizer and layout and can change only {', '.join(sorted(CONTINUABLE))}: "
            "start a new run without --resume"
        )
    if plan.cfg.train_iters <= previous.step:
        raise RunStateError(
            f"--allow-new-data: train_iters {plan.cfg.train_iters} is not past step {previous.step}, where the run "
            f"labelled {plan.cfg.name!r} ({previous.key}) stopped: give more train_iters"
        )
    newer = plan_run(plan.cfg, continued_from={"run": previous.key, "step": previous.step})
    return newer, previous.storage.path(newest_checkpoint_name(previous.storage))


def data_fingerprint(cfg: TrainConfig) -> str:
    """What a checkpoint records of the data it was trained on: the dataset manifest's sha256, or for a blend the
    sha256 over each one's and its weight."""
    fingerprints = [sha256_file(Path(data) / MANIFEST) for data in cfg.datasets]
    if len(fingerprints) == 1:
        return fingerprints[0]
    return hashlib.sha256(json.dumps([fingerprints, cfg.weights]).encode()).hexdigest()


def fine_tuning_labels(data: str | Path) -> dict[str, Any]:
    """An instructions stage output's label dataset and padding id (a dataset training pads one example per
    sequence), or nothing for a tokenized corpus."""
    labels = label_prefix(data)
    return {} if labels is None else {"label_prefix": str(labels.resolve()), "pad_id": tokenized_stats(data)["eod_id"]}


def chat_template_of(data: str | Path) -> str | None:
    """The chat template an instructions dataset was rendered with (the first one of a blend that has one)."""
    template = Path(data) / CHAT_TEMPLATE_FILE
    return str(template.resolve()) if template.exists() else None


def launch(
    plan: RunPlan, resume: bool = False, initial_checkpoint: str | None = None, allow_new_data: bool = False
) -> str:
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    cfg, storage = plan.cfg, plan.storage
    ensure_ray(cfg.ray_address)
    refuse_beyond_local(
        {"CPU": cfg.num_workers * cfg.cpus_per_worker, "GPU": cfg.num_workers if cfg.use_gpu else 0},
        f"train: {cfg.num_workers} worker(s) of {cfg.cpus_per_worker} CPU{' and 1 GPU' if cfg.use_gpu else ''}",
        "lower train.num_workers or cpus_per_worker, set use_gpu: false, or give train.ray_address of a cluster",
    )
    local_dir = storage.local_dir()
    local_dir.mkdir(parents=True, exist_ok=True)
    params = {
        **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()},
        **{f"model.{k}": v for k, v in dataclasses.asdict(plan.model).items()},
        "data.key": plan.manifest["key"],
        "run.key": plan.key,
    }
    loop_config = {
        "train": dataclasses.asdict(cfg),
        "model": dataclasses.asdict(plan.model),
        "datasets": [
            {
                "prefix": str(data_prefix(data).resolve()),
                "split_prefixes": {
                    split: str(prefix.resolve()) for split, prefix in named_split_prefixes(data).items()
                },
                "weight": weight,
                **fine_tuning_labels(data),
            }
            for data, weight in zip(cfg.datasets, cfg.weights, strict=True)
        ],
        "data_fingerprint": data_fingerprint(cfg),
        "index_cache": str(local_dir / INDEX_CACHE_DIR),
        "storage": storage,
        "allow_new_data": allow_new_data,
        "initial_checkpoint": initial_checkpoint,
        "mlflow_tracking_uri": cfg.tracking_uri,
        "tokenizer_file": str((Path(cfg.datasets[0]) / TOKENIZER_FILE).resolve()),
        "chat_template_file": next(filter(None, map(chat_template_of, cfg.datasets)), None),
    }
    if resume:  # refuse before anything is started or written
        state = latest_state(storage)
        if state is not None:
            check_compatible(state, loop_config)
    if storage.read_text(RUN_FILE) is None:
        storage.write_text(json.dumps(plan.record(), indent=1, sort_keys=True), RUN_FILE)
    loop_config["mlflow_run_id"] = open_mlflow_run(cfg, storage, params, resume)
    storage.write_text(
        json.dumps({"data": str(Path(cfg.datasets[0]).resolve()), "data_fingerprint": loop_config["data_fingerprint"]}),
        DATA_FILE,
    )
    storage.delete(DIVERGED_FILE)  # an earlier attempt's, which a resumed run may or may not repeat
    print(f"training run {plan.key} ({cfg.name}) in {storage.uri}", flush=True)
    if not on_cluster():
        # Ray Train's preemption watcher is for cloud instances; creating it on a local Ray only logs a core error
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=storage.name,
            storage_path=storage.parent,
            storage_filesystem=storage.filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
            worker_runtime_env={"env_vars": worker_env(cfg)},  # set before a worker starts, so NCCL sees it
            logging_config=LoggingConfig(log_level="WARNING"),  # not each checkpoint and report, twice per worker
        ),
    )
    try:
        trainer.fit()
    except TrainingFailedError as error:  # the workers failed, past max_failures restarts
        close_mlflow_run(plan, loop_config, "FAILED")
        ours = neox_error_of(error)
        if ours is None:
            raise
        raise ours from error
    except BaseException:  # a second Ctrl-C, or Ray Train's abort ending in SystemExit
        close_mlflow_run(plan, loop_config, "KILLED")
        raise
    if finished(plan):  # also after an attempt that diverged, wrote its marker and was restarted by Ray Train
        close_mlflow_run(plan, loop_config, "FINISHED")
        return storage.uri
    diverged = storage.read_text(DIVERGED_FILE)  # the workers stopped at a NaN and returned
    if diverged is not None:
        close_mlflow_run(plan, loop_config, "FAILED")
        raise diverged_error(plan, json.loads(diverged))
    # fit() also returns, without an error, from a run Ray Train aborted on SIGINT (Ctrl-C, a task's timeout)
    close_mlflow_run(plan, loop_config, "KILLED")
    step = (latest_state(storage) or {}).get("step", 0)
    raise RunStateError(
        f"training run {plan.key} was stopped (interrupted) before step {cfg.train_iters}; its latest "
        f"checkpoint is step {step}, which a rerun resumes from"
    )


class DivergedError(RunStateError):
    """The training loss or gradient norm stopped being a number: training on would only save broken weights."""


def diverged_error(plan: RunPlan, diverged: dict[str, Any]) -> DivergedError:
    newest = (latest_state(plan.storage) or {}).get("step")
    kept = f"its newest checkpoint (step {newest}) is kept" if newest else "it has no checkpoint"
    norm = "" if diverged["grad_norm"] is None else f", its gradient norm {diverged['grad_norm']}"
    return DivergedError(
        f"training run {plan.key} stopped at step {diverged['step']}: its loss is {diverged['loss']}{norm}. Nothing "
        f"of that step was saved; {kept}, though weights already diverging may be in it. Values that grew to this: "
        "lower train.lr or lengthen warmup (a new run); NaN from the first step: a kernel or precision setting is "
        "broken, try the torch kernels and compile: false"
    )


def neox_error_of(error: Exception) -> NeoxError | None:
    """The error the workers raised when it is one of ours (a config the engine refuses, say), so that the command
    prints it as the one line it is rather than inside Ray Train's WorkerGroupError traceback; None otherwise."""
    failures = list(getattr(error, "worker_failures", {}).values())
    return failures[0] if failures and all(isinstance(failure, NeoxError) for failure in failures) else None


def close_mlflow_run(plan: RunPlan, loop_config: dict[str, Any], status: str) -> None:
    """Log the run's configs, metrics.jsonl and plot to its MLflow run, and end it with `status`."""
    from mlflow import MlflowClient

    from neox.train.artifacts import log_training_artifacts
    from neox.train.engine import deepspeed_config

    client, run_id = MlflowClient(tracking_uri=loop_config["mlflow_tracking_uri"]), loop_config["mlflow_run_id"]
    try:
        metrics = plan.storage.read_text(TRAIN_METRICS_FILE)
        log_training_artifacts(client, run_id, plan.cfg, plan.model, deepspeed_config(plan.cfg), metrics)
        client.set_terminated(run_id, status)
    except Exception as err:  # the run's outcome is its files; MLflow being down must not turn it into a failure
        print(f"MLflow: could not finish run {run_id} ({status}): {type(err).__name__}", flush=True)
