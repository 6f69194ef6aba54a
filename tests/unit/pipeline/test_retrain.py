"""What a retrain runs on: the shards that arrived since the champion was trained (continue), or all of them
(scratch); and the run it trains into."""

from __future__ import annotations

from pathlib import Path

import pytest

from neox.errors import ConfigError, RunStateError
from neox.pipeline.retrain import Champion, retrain_config, retrain_data, retrain_overrides


@pytest.fixture
def incoming(tmp_path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


def champion_on(*sources: str) -> Champion:
    return Champion("3", Path("/runs/base/final/model"), sources)


def test_continue_takes_only_the_shards_the_champion_has_not_seen_with_its_tokenizer(tmp_path, incoming):
    for name in ("a.jsonl.zst", "b.jsonl.zst"):
        (incoming / name).write_bytes(b"x")
    base = {"corpus": "sample", "dedup": {"threshold": 0.7}, "tokenizer": {"vocab_size": 8192}}
    cfg = retrain_config({"mode": "continue", "data": {"sources": [f"{incoming}/"]}})
    data = retrain_data(base, cfg, tmp_path, champion_on(f"{incoming}/a.jsonl.zst"))
    assert data == {
        "dedup": {"threshold": 0.7},
        "sources": [f"{incoming}/b.jsonl.zst"],
        "tokenizer": {"from": "/runs/base/final/model/tokenizer.json"},
    }  # the sample corpus is replaced
    assert retrain_data(base, cfg, tmp_path, champion_on(f"{incoming}/a.jsonl.zst", f"{incoming}/b.jsonl.zst")) is None


def test_continue_with_an_empty_watched_folder_has_nothing_to_do_and_without_a_champion_is_an_error(tmp_path, incoming):
    cfg = retrain_config({"data": {"sources": [f"{incoming}/"]}})
    assert retrain_data({"corpus": "sample"}, cfg, tmp_path, champion_on("elsewhere")) is None
    with pytest.raises(RunStateError, match="needs a champion to continue from: run the pretrain flow first"):
        retrain_data({"corpus": "sample"}, cfg, tmp_path, None)
    with pytest.raises(FileNotFoundError, match="source folder .*missing does not exist"):
        retrain_data({}, retrain_config({"data": {"sources": [f"{tmp_path}/missing/"]}}), tmp_path, champion_on("x"))


def test_scratch_trains_on_the_merged_data_section_into_a_run_named_by_its_data():
    cfg = retrain_config({"mode": "scratch", "data": {"dedup": {"threshold": 0.6}}, "train": {"train_iters": 50}})
    assert retrain_data({"corpus": "sample", "dedup": {"threshold": 0.8}}, cfg, "work", None) == {
        "corpus": "sample",
        "dedup": {"threshold": 0.6},
    }
    assert retrain_overrides("tiny", cfg, "work/tokenize/0123456789abcdef", None) == {
        "train_iters": 50,
        "name": "tiny-scratch-01234567",
    }


def test_continue_starts_from_the_champion_weights_in_a_run_named_by_champion_and_data():
    cfg = retrain_config({"train": {"lr": 1e-4}})
    assert retrain_overrides("tiny", cfg, "work/tokenize/fedcba9876543210", champion_on()) == {
        "lr": 1e-4,
        "name": "tiny-v3-fedcba98",
        "init_from": "/runs/base/final/model",
    }


@pytest.mark.parametrize(
    "section, message",
    [
        ({"mode": "again"}, "retrain.mode: input should be 'continue' or 'scratch'"),
        ({"train": {"init_from": "x"}}, "derives them"),
        ({"data": ["x"]}, "retrain.data: must be a mapping of keys"),
        ({"when": "weekly"}, "retrain.when: unknown key \\(known: data, mode, train\\)"),
    ],
)
def test_bad_retrain_sections_are_clear_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        retrain_config(section)
