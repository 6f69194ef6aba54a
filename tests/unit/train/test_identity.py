"""A training run's key: everything that changes the weights enters it, run-control keys do not."""

from __future__ import annotations

import dataclasses

import pytest

from neox.train.config import TrainConfig
from neox.train.identity import RUN_CONTROL, differences, identity, key_of
from tests.conftest import tiny_config

BASE = TrainConfig(model=("configs/model/tiny.yml",), data="work/tokenize/abc", lr=1e-3, min_lr=1e-4)


def key(cfg: TrainConfig = BASE, data_key: str = "data-1", **model) -> str:
    return key_of(identity(cfg, tiny_config(**model), data_key, None))


@pytest.mark.parametrize(
    "change",
    [
        {"log_interval": 1},
        {"checkpoint_interval": 7},
        {"eval_interval": 3},
        {"name": "another-label"},
        {"storage_path": "/elsewhere"},
        {"mlflow_tracking_uri": "http://mlflow:5000"},
        {"env": {"NCCL_DEBUG": "INFO"}},
        {"num_to_keep": 5},
        {"max_failures": 3},
        {"ray_address": "auto"},
        {"data": "/another/copy/of/the/same/dataset"},
    ],
)
def test_run_control_keeps_the_same_run(change):
    assert key(dataclasses.replace(BASE, **change)) == key()


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 2e-3},
        {"seed": 7},
        {"train_iters": 300},
        {"num_workers": 4},
        {"precision": "bf16"},
        {"zero_stage": 2},
        {"cross_entropy": "chunked"},
        {"fused_adamw": True},
        {"lora": {"r": 4}},
    ],
)
def test_what_changes_the_weights_makes_a_new_run(change):
    assert key(dataclasses.replace(BASE, **change)) != key()


def test_the_dataset_and_the_model_enter_the_key_and_differences_name_them():
    assert key(data_key="data-2") != key() and key(hidden_size=128) != key()
    ours, other_data = identity(BASE, tiny_config(), "data-1", None), identity(BASE, tiny_config(), "data-2", None)
    assert differences(ours, other_data) == ["data"]
    assert differences(ours, identity(BASE, tiny_config(hidden_size=128), "data-1", None)) == ["model.hidden_size"]


def test_every_run_control_key_is_a_train_key():
    assert RUN_CONTROL <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_keys_added_later_leave_the_keys_of_runs_that_do_not_use_them_as_they_were():
    """A run of the defaults keeps the key it had before LoRA, the fused loss and fused AdamW existed: upgrading
    does not orphan a stopped run's checkpoints."""
    settings = identity(BASE, tiny_config(), "data-1", None)["train"]
    assert not {"lora", "cross_entropy", "fused_adamw"} & set(settings)
    assert key() == "6f164225fbf520ae"  # what d1e968a, before them, gave this config
