"""What a training run adds to its MLflow run when it ends: the resolved train and model configs, the DeepSpeed
config, metrics.jsonl, and a plot of loss, learning rate and gradient norm over the steps (training.png)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml

from neox.model.config import ModelConfig
from neox.train.config import TrainConfig

PLOTTED = (("loss", "training loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"))


def training_plot(metrics_jsonl: str):
    """A matplotlib Figure of each step's loss, learning rate and gradient norm (lines torn by a crash skipped)."""
    from matplotlib.figure import Figure  # not pyplot: no global figure state, no display backend

    records = []
    for line in metrics_jsonl.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    figure = Figure(figsize=(8, 7), layout="constrained")
    axes = figure.subplots(len(PLOTTED), 1, sharex=True)
    for ax, (key, label) in zip(axes, PLOTTED, strict=True):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        ax.plot([s for s, _ in points], [v for _, v in points], linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    return figure


def log_training_artifacts(
    client, run_id: str, cfg: TrainConfig, model: ModelConfig, deepspeed: dict[str, Any], metrics_jsonl: str | None
) -> None:
    client.log_text(run_id, yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False), "config/train.yaml")
    client.log_text(run_id, yaml.safe_dump(model.to_neox(), sort_keys=False), "config/model.yml")
    client.log_dict(run_id, deepspeed, "config/deepspeed.json")
    if metrics_jsonl:
        client.log_text(run_id, metrics_jsonl, "metrics.jsonl")
        client.log_figure(run_id, training_plot(metrics_jsonl), "training.png")


def _plain(value: Any) -> Any:
    """Tuples as lists, so the YAML is plain (no Python tags)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
