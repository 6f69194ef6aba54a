"""The training stage's driver: resolve the config, open the MLflow run, and hand the per-worker loop to Ray
Train's TorchTrainer (one worker per GPU, or per CPU slot), which restarts workers from the latest checkpoint
when one dies and continues a stopped run of the same name with --resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from neox.data.tokenize import data_prefix
from neox.errors import ConfigError, RunStateError
from neox.model.config import load_model_config
from neox.pipeline.layout import CONFIG_FILE, DATA_FILE, FINAL_MODEL, INDEX_CACHE_DIR, TOKENIZER_FILE, WEIGHTS_FILE
from neox.pipeline.stage import MANIFEST, sha256_file, verify_output
from neox.runtime.ray_cluster import ensure_ray
from neox.train.checkpointing import check_compatible, latest_state
from neox.train.config import TrainConfig
from neox.train.loop import train_loop_per_worker
from neox.train.storage import RunStorage, run_storage
from neox.train.tracking import open_mlflow_run


def storage_of(cfg: TrainConfig) -> RunStorage:
    return run_storage(cfg.storage_path, cfg.name)


def check_init_from(checkpoint: str, model_cfg, data: Path) -> None:
    """Weights to start from must fit the configured model and speak the dataset's tokenizer."""
    from neox.model.checkpoint import load_model_config_from

    if not (Path(checkpoint) / WEIGHTS_FILE).is_file():
        raise ConfigError(f"train.init_from {checkpoint} is not a neox checkpoint ({WEIGHTS_FILE} is missing)")
    start = load_model_config_from(checkpoint)
    if start != model_cfg:
        changed = sorted(
            f.name for f in dataclasses.fields(start) if getattr(start, f.name) != getattr(model_cfg, f.name)
        )
        raise ConfigError(
            f"train.init_from {checkpoint} holds another model shape ({', '.join(changed)} differ from train.model)"
        )
    ours, theirs = Path(checkpoint) / TOKENIZER_FILE, data / TOKENIZER_FILE
    if ours.exists() and sha256_file(ours) != sha256_file(theirs):
        raise ConfigError(
            f"train.init_from {checkpoint} was trained with another tokenizer than {data} was tokenized "
            "with: tokenize the new data with the model's tokenizer (data.tokenizer.from)"
        )


def train(cfg: TrainConfig, resume: bool = False, allow_new_data: bool = False) -> str:
    """Train; returns where the run lives (its local folder, or s3://… URI): checkpoints, metrics.jsonl,
    final/model and final/hf."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if cfg.data is None:
        raise ConfigError("train.data is not set: give a tokenize stage output (neox tokenize ...) or --data")
    manifest = verify_output(cfg.data)
    vocab = manifest["stats"]["vocab_size"]
    model_cfg, _ = load_model_config(*cfg.model, vocab_size=vocab)
    if cfg.seq_length > model_cfg.max_position_embeddings:
        positions = model_cfg.max_position_embeddings
        raise ConfigError(f"train.seq_length {cfg.seq_length} exceeds the model's max_position_embeddings {positions}")
    if cfg.init_from:
        check_init_from(cfg.init_from, model_cfg, Path(cfg.data))
        cfg = dataclasses.replace(cfg, init_from=str(Path(cfg.init_from).resolve()))
    storage = storage_of(cfg)
    if storage.checkpoints() and not resume:
        raise RunStateError(f"{storage.uri} already holds a run: pass --resume to continue it, or choose another name")
    local_dir = storage.local_dir()
    local_dir.mkdir(parents=True, exist_ok=True)

    params = {
        **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()},
        **{f"model.{k}": v for k, v in dataclasses.asdict(model_cfg).items()},
        "data.key": manifest["key"],
    }
    loop_config = {
        "train": dataclasses.asdict(cfg),
        "model": dataclasses.asdict(model_cfg),
        "data_prefix": str(data_prefix(cfg.data).resolve()),
        "data_fingerprint": sha256_file(Path(cfg.data) / MANIFEST),
        "index_cache": str(local_dir / INDEX_CACHE_DIR),
        "storage": storage,
        "allow_new_data": allow_new_data,
        "mlflow_tracking_uri": cfg.tracking_uri,
        "tokenizer_file": str((Path(cfg.data) / TOKENIZER_FILE).resolve()),
    }
    if resume:  # refuse before anything is started or written
        state = latest_state(storage)
        if state is not None:
            check_compatible(state, loop_config)
    loop_config["mlflow_run_id"] = open_mlflow_run(cfg, storage, params, resume)
    storage.write_text(
        json.dumps({"data": str(Path(cfg.data).resolve()), "data_fingerprint": loop_config["data_fingerprint"]}),
        DATA_FILE,
    )
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


def train_or_resume(cfg: TrainConfig) -> tuple[str, str]:
    """What a pipeline rerun wants: (run location, what happened). A finished run of this name on this dataset
    is reused, a stopped one resumes from its latest checkpoint, anything else starts fresh."""
    storage = storage_of(cfg)
    state = latest_state(storage)
    if state is None:
        return train(cfg), "trained"
    if cfg.data is not None and state["data_fingerprint"] != sha256_file(Path(cfg.data) / MANIFEST):
        raise RunStateError(
            f"{storage.uri} holds a run on another dataset: give train.name a new value "
            "(or continue it on purpose with neox train --resume --allow-new-data)"
        )
    if state["step"] >= cfg.train_iters and storage.read_text(*FINAL_MODEL, CONFIG_FILE) is not None:
        return storage.uri, "reused"
    return train(cfg, resume=True), "resumed"
