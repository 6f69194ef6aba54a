"""The training stage's driver: plan the run (its key and folder), open the MLflow run, and hand the per-worker
loop to Ray Train's TorchTrainer (one worker per GPU, or per CPU slot), which restarts workers from the latest
checkpoint when one dies. A finished run of the same key is reused, a stopped one resumed; `--allow-new-data`
continues a run of the same config on another dataset as a new run (continued pretraining)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from neox.data.tokenize import data_prefix
from neox.errors import RunStateError
from neox.pipeline.layout import CONFIG_FILE, DATA_FILE, FINAL_MODEL, INDEX_CACHE_DIR, RUN_FILE, TOKENIZER_FILE
from neox.pipeline.stage import MANIFEST, sha256_file
from neox.runtime.ray_cluster import ensure_ray
from neox.train.checkpointing import check_compatible, latest_state, newest_checkpoint_name
from neox.train.config import TrainConfig
from neox.train.identity import differences
from neox.train.loop import train_loop_per_worker
from neox.train.runs import RunPlan, list_runs, plan_run
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
    start = None
    if state is None and resume:
        plan, start = continued_run(plan, allow_new_data)
    return launch(plan, resume=state is not None, initial_checkpoint=start, allow_new_data=allow_new_data)


def train_or_resume(cfg: TrainConfig) -> tuple[str, str]:
    """What a pipeline rerun wants: (run location, what happened). A finished run of this key is reused, a
    stopped one resumes from its latest checkpoint, anything else starts fresh."""
    plan = plan_run(cfg)
    state = latest_state(plan.storage)
    if state is None:
        return launch(plan), "trained"
    if state["step"] >= cfg.train_iters and plan.storage.read_text(*FINAL_MODEL, CONFIG_FILE) is not None:
        return plan.storage.uri, "reused"
    return launch(plan, resume=True), "resumed"


def continued_run(plan: RunPlan, allow_new_data: bool) -> tuple[RunPlan, str]:
    """`--resume` with no run of this key: with `--allow-new-data`, the newest run of the same label and model is
    continued (weights, optimizer, schedule position) as a new run on this dataset and these settings, e.g. more
    train_iters; otherwise an error saying what differs. Returns the new run's plan and its starting checkpoint."""
    labelled = [r for r in list_runs(plan.cfg.storage_path) if r.record and r.label == plan.cfg.name]
    previous = next((r for r in labelled if newest_checkpoint_name(r.storage)), None)
    if previous is None:
        raise RunStateError(f"--resume: no run labelled {plan.cfg.name!r} under {plan.cfg.storage_path} to continue")
    changed = [c for c in differences(plan.identity, previous.record["identity"]) if c != "continued_from"]
    model = [c.removeprefix("model.") for c in changed if c.startswith("model.")]
    if model:
        raise RunStateError(
            f"--resume: the checkpoint's model differs ({', '.join(model)}) in the run labelled "
            f"{plan.cfg.name!r} ({previous.key}); start a new run without --resume"
        )
    if not allow_new_data and "data" in changed:
        raise RunStateError(
            f"--resume: the run labelled {plan.cfg.name!r} ({previous.key}) was trained on another dataset "
            f"({previous.data_key} vs {plan.identity['data']}): pass --allow-new-data to continue it on this one"
        )
    if not allow_new_data:
        raise RunStateError(
            f"--resume: no run of this config to continue; the run labelled {plan.cfg.name!r} ({previous.key}) "
            f"differs in {', '.join(changed)}: start a new run without --resume, or continue that one under these "
            "settings with --allow-new-data"
        )
    newer = plan_run(plan.cfg, continued_from={"run": previous.key, "step": previous.step})
    return newer, previous.storage.path(newest_checkpoint_name(previous.storage))


def launch(
    plan: RunPlan, resume: bool = False, initial_checkpoint: str | None = None, allow_new_data: bool = False
) -> str:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg, storage = plan.cfg, plan.storage
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
        "data_prefix": str(data_prefix(cfg.data).resolve()),
        "data_fingerprint": sha256_file(Path(cfg.data) / MANIFEST),
        "index_cache": str(local_dir / INDEX_CACHE_DIR),
        "storage": storage,
        "allow_new_data": allow_new_data,
        "initial_checkpoint": initial_checkpoint,
        "mlflow_tracking_uri": cfg.tracking_uri,
        "tokenizer_file": str((Path(cfg.data) / TOKENIZER_FILE).resolve()),
    }
    if resume:  # refuse before anything is started or written
        state = latest_state(storage)
        if state is not None:
            check_compatible(state, loop_config)
    if storage.read_text(RUN_FILE) is None:
        storage.write_text(json.dumps(plan.record(), indent=1, sort_keys=True), RUN_FILE)
    loop_config["mlflow_run_id"] = open_mlflow_run(cfg, storage, params, resume)
    storage.write_text(
        json.dumps({"data": str(Path(cfg.data).resolve()), "data_fingerprint": loop_config["data_fingerprint"]}),
        DATA_FILE,
    )
    print(f"training run {plan.key} ({cfg.name}) in {storage.uri}", flush=True)
    ensure_ray(cfg.ray_address)
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
            worker_runtime_env={"env_vars": cfg.env},  # set before the worker process starts, so NCCL sees it
        ),
    )
    result = trainer.fit()
    from mlflow import MlflowClient

    status = "FAILED" if result.error is not None else "FINISHED"
    MlflowClient(tracking_uri=loop_config["mlflow_tracking_uri"]).set_terminated(loop_config["mlflow_run_id"], status)
    if result.error is not None:
        raise result.error
    return storage.uri
