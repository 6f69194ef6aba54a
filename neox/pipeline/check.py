"""A pipeline config checked whole at the edge, before any stage runs: a typo in the registry rule should not
surface after hours of data preparation and training.

    work_root: work        # where stage outputs live
    data: {...}            # neox.data.prepare
    train: {...}           # neox.train.config
    eval: {...}            # neox.eval.run.eval_configs
    registry: {name: ..., rule: {...}}   # neox.registry.rule
    retrain: {...}         # neox.pipeline.retrain (optional)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neox.data.prepare import check_section
from neox.errors import ConfigError
from neox.eval.run import eval_configs
from neox.model.config import load_model_config
from neox.pipeline.configfile import read_pipeline_config
from neox.pipeline.retrain import retrain_config
from neox.registry.rule import promotion_rule
from neox.train.config import load_train_config

SECTIONS = ("work_root", "data", "train", "eval", "registry", "retrain")


def check_pipeline_config(path: str | Path) -> dict[str, Any]:
    """Validate every section of a pipeline config file; returns the parsed file."""
    raw = read_pipeline_config(path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    for section in ("data", "train"):
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"{path} has no `{section}:` section")
    check_section(raw["data"])
    cfg = load_train_config(path)
    if "://" in cfg.storage_path:  # caught here, not after days of training
        raise ConfigError(
            f"{path}: train.storage_path {cfg.storage_path} is object storage, but the flows evaluate, "
            "register and retrain from the final checkpoint by its file path: give a path every node "
            "shares (on the cluster /fsx/neox-work/train, which FSx exports to the bucket); "
            "`neox train` alone can train to s3://"
        )
    load_model_config(*cfg.model, vocab_size=50277)  # the architecture; the real vocabulary comes from the tokenizer
    eval_configs(raw.get("eval"), cfg.split)
    registry = raw.get("registry") or {}
    if not isinstance(registry, dict) or set(registry) - {"name", "rule"}:
        raise ConfigError(f"{path}: the registry section takes name and rule, got {registry!r}")
    promotion_rule(registry.get("rule"))
    if raw.get("retrain") is not None:
        retrain = retrain_config(raw["retrain"])
        check_section({**raw["data"], **retrain.data})
        load_train_config(path, retrain.train)
    return raw


def describe(path: str | Path) -> str:
    """`neox check`'s answer: the config checked whole, in one line (model, schedule, workers, precision)."""
    raw = check_pipeline_config(path)
    cfg = load_train_config(path)
    return (
        f"{path}: ok — model {', '.join(Path(m).name for m in cfg.model)}, {cfg.train_iters} steps x "
        f"{cfg.global_batch_size} sequences x {cfg.seq_length} tokens on {cfg.num_workers} worker(s), "
        f"{cfg.precision}, ZeRO-{cfg.zero_stage}; sections: {', '.join(raw)}"
    )
