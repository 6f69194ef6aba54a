"""A pipeline config is checked whole before any stage runs: every shipped config passes, a mistake in any
section is reported naming it."""

from __future__ import annotations

import pytest
import yaml

from neox.errors import ConfigError
from neox.pipeline.check import check_pipeline_config
from neox.train.config import load_train_config
from tests.conftest import REPO

PIPELINES = sorted((REPO / "configs" / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_pipeline_config_is_valid(path):
    check_pipeline_config(path)


def test_the_pile_configs_keep_the_published_batch_and_schedule():
    pythia = load_train_config(REPO / "configs" / "pipeline" / "pile-pythia-160m.yaml")
    assert (pythia.global_batch_size, pythia.seq_length, pythia.train_iters, pythia.lr) == (1024, 2048, 143000, 6e-4)
    neox20b = load_train_config(REPO / "configs" / "pipeline" / "pile-neox-20b.yaml")
    assert (neox20b.global_batch_size, neox20b.train_iters, neox20b.lr, neox20b.zero_stage) == (
        1536,
        150000,
        0.97e-4,
        3,
    )
    assert neox20b.activation_checkpointing and neox20b.precision == pythia.precision == "bf16"
    assert neox20b.storage_path.startswith("/fsx/") and neox20b.ray_address == "auto"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"trian": {}}, "unknown section\\(s\\) trian"),
        ({"data": {"dedupe": {}}}, "unknown data config key\\(s\\): dedupe"),
        ({"train": {"zero_stage": 5}}, "zero_stage must be 0, 1, 2 or 3"),
        (
            {"train": {"storage_path": "s3://bucket/train"}},
            "flows evaluate, register and retrain from the final checkpoint by its file path",
        ),
        ({"eval": {"dtype": "int8"}}, "eval.dtype must be float32, bfloat16 or float16"),
        ({"eval": {"tasks": []}}, "eval.tasks names no task"),
        ({"registry": {"name": "m", "rule": {"metrc": "x"}}}, "unknown registry.rule key\\(s\\): metrc"),
        ({"retrain": {"mode": "again"}}, "retrain.mode must be continue or scratch"),
        ({"retrain": {"train": {"split": "1,1,1"}}}, "nor split"),
        ({"retrain": {"train": {"lr": "fast"}}}, "'train.lr' must be float"),
    ],
)
def test_a_mistake_in_any_section_is_reported_before_anything_runs(tmp_path, change, message):
    raw = yaml.safe_load((REPO / "configs" / "pipeline" / "local.yaml").read_text())
    raw["train"]["model"] = str(REPO / "configs" / "model" / "tiny.yml")
    for section, value in change.items():
        raw[section] = {**raw[section], **value} if section in ("data", "train") else value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        check_pipeline_config(path)
