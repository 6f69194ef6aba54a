"""`neox check`, and the check the flows run before their first stage: the whole pipeline config typed
(`neox.pipeline.config`), plus what only the flows need."""

from __future__ import annotations

from pathlib import Path

from neox.errors import ConfigError
from neox.pipeline.config import PipelineConfig, load_pipeline_config


def check_pipeline_config(path: str | Path) -> PipelineConfig:
    """Every section of a pipeline config file checked; the flows also need the final checkpoint on a path."""
    cfg = load_pipeline_config(path)
    if "://" in cfg.train.storage_path:  # caught here, not after days of training
        raise ConfigError(
            f"{path}: train.storage_path {cfg.train.storage_path} is object storage, but the flows evaluate, "
            "register and retrain from the final checkpoint by its file path: give a path every node "
            "shares (on the cluster /fsx/neox-work/train, which FSx exports to the bucket); "
            "`neox train` alone can train to s3://"
        )
    return cfg


def describe(path: str | Path) -> str:
    """`neox check`'s answer: the config checked whole, in one line (model, schedule, workers, precision)."""
    cfg = check_pipeline_config(path)
    train = cfg.train
    names = ("work_root", "data", "train", "eval", "registry", "retrain", "finetune")
    sections = [name for name in names if getattr(cfg, name) is not None]
    return (
        f"{path}: ok — model {', '.join(Path(m).name for m in train.model)}, {train.train_iters} steps x "
        f"{train.global_batch_size} sequences x {train.seq_length} tokens on {train.num_workers} worker(s), "
        f"{train.precision}, ZeRO-{train.zero_stage}; sections: {', '.join(sections)}"
    )
