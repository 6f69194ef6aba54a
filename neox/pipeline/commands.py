"""What the `neox data`, `neox train`, `neox register` and `neox promote` commands take from a pipeline config
file: the stage functions with the config's sections, and the promotion rule, so the CLI only handles arguments."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from neox.errors import ConfigError
from neox.pipeline.configfile import read_pipeline_config
from neox.registry.rule import PromotionRule, promotion_rule


def prepare_data_from_config(path: str | Path) -> Path:
    """Run (or reuse) the data stages of the config's `data:` section; returns the tokenized dataset's folder."""
    from neox.data.prepare import data_config, prepare_data

    raw = read_pipeline_config(path)
    if not isinstance(raw.get("data"), dict):
        raise ConfigError(f"{path} has no `data:` section")
    work_root = raw.get("work_root", "work")
    if not isinstance(work_root, str) or not work_root.strip():
        raise ConfigError(f"{path}: work_root: input should be a folder's path, got {work_root!r}")
    try:
        data = data_config(raw["data"])
    except ConfigError as err:  # named with its file, as `neox check` names it
        raise ConfigError(f"{path}: {err}") from None
    return prepare_data(data, Path(work_root))


def train_from_config(
    path: str | Path, overrides: dict[str, Any], resume: bool = False, allow_new_data: bool = False
) -> str:
    """Train by the config's `train:` section with `overrides`; without train.data the `data:` section is
    prepared first (finished data stages are reused). Returns where the run lives."""
    from neox.train.config import load_train_config
    from neox.train.launch import train

    cfg = load_train_config(path, overrides)
    if cfg.data is None:
        if not isinstance(read_pipeline_config(path).get("data"), dict):
            raise ConfigError(f"{path}: no train.data, --data or `data:` section to train on")
        cfg = dataclasses.replace(cfg, data=str(prepare_data_from_config(path)))
    return train(cfg, resume=resume, allow_new_data=allow_new_data)


def tracking_uri_from_config(flag: str | None, path: str | Path | None = None) -> str:
    """The tracking URI a registry command uses: its flag, MLFLOW_TRACKING_URI, the config's, the default."""
    from neox.runtime.tracking_uri import tracking_uri

    train = (read_pipeline_config(path).get("train") or {}) if path else {}
    return tracking_uri(flag, train.get("mlflow_tracking_uri") if isinstance(train, dict) else None)


def promotion_rule_from_config(path: str | Path | None = None) -> PromotionRule:
    """The config's `registry.rule` (the default rule without a config)."""
    section = (read_pipeline_config(path).get("registry") or {}) if path else {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: the registry section takes name and rule, got {section!r}")
    return promotion_rule(section.get("rule"))
