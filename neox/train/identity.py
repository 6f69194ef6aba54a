"""A training run's identity. Its key hashes everything that changes the trained weights: the resolved model, the
optimizer, schedule, batch, precision and parallelism settings, the seed, the dataset's key, the weights it
starts from (`init_from`, or the run it continues), and TRAIN_CODE_VERSION. Run-control keys (where it runs and
logs, how often it checkpoints, its label) do not enter it, so changing them reuses or resumes the same run.
The run lives in `<storage_path>/<key>/`, described by its run.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from neox.model.config import ModelConfig
from neox.train.config import TrainConfig

# Bumped by hand when a code change alters the weights a config trains to (not on every commit).
TRAIN_CODE_VERSION = "2"  # 2: each parameter initialised from its own generator (layout-independent)

# `train:` keys that do not change the weights: changing one reuses or resumes the same run. Every other key
# does, num_workers, micro_batch_size and gradient_accumulation_steps included: the floating-point order of the
# gradient sums depends on them, and a ZeRO checkpoint is partitioned by the data-parallel world size, so a resume
# on another worker count could not load it.
RUN_CONTROL = frozenset(
    {
        "name",
        "storage_path",
        "log_interval",
        "eval_interval",
        "eval_iters",
        "checkpoint_interval",
        "num_to_keep",
        "max_failures",
        "ray_address",
        "cpus_per_worker",
        "env",
        "mlflow_tracking_uri",
        "mlflow_experiment",
    }
)
# Train keys added after runs were keyed, with the default that reproduces what runs did before them.
ADDED_WITH_DEFAULT = {
    "lora": None,
    "cross_entropy": "full",
    "fused_adamw": False,
    "layer_norm": "torch",
    "rotary": "torch",
}
# Paths whose content enters the key instead: the resolved model config, the dataset's stage key (with the weights,
# when several are blended), the weights' sha256.
RESOLVED = frozenset({"model", "data", "data_weights", "init_from"})


def identity(
    cfg: TrainConfig,
    model: ModelConfig,
    data_key: str | list[list],
    init_from: str | None,
    continued_from: dict | None = None,
) -> dict[str, Any]:
    """What a run's key hashes, as recorded in its run.json."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_CONTROL | RESOLVED}
    for key, default in ADDED_WITH_DEFAULT.items():  # runs that do not use them keep the keys they had before
        if settings[key] == default:
            del settings[key]
    payload = {
        "code_version": TRAIN_CODE_VERSION,
        "train": settings,
        "model": dataclasses.asdict(model),
        "data": data_key,
        "init_from": init_from,
        "continued_from": continued_from,
    }
    return json.loads(json.dumps(payload, sort_keys=True))  # as run.json holds it: lists, not tuples


def key_of(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The identity fields two runs differ in, dotted (`train.lr`, `model.hidden_size`, `data`)."""
    out = []
    for part in ("code_version", "data", "init_from", "continued_from"):
        if ours.get(part) != theirs.get(part):
            out.append(part)
    for part in ("train", "model"):
        mine, other = ours.get(part) or {}, theirs.get(part) or {}
        out += [f"{part}.{k}" for k in sorted(set(mine) | set(other)) if mine.get(k) != other.get(k)]
    return out
