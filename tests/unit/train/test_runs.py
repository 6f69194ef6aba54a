"""Keyed runs on disk without training: what `neox runs` lists, and which runs `--resume` and
`--resume --allow-new-data` may continue (decided by the driver before any worker starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neox.errors import ConfigError, RunStateError
from neox.pipeline.layout import DEEPSPEED_TAG, RUN_FILE, STATE_FILE
from neox.train.config import TrainConfig
from neox.train.launch import continuation_of, continued_run
from neox.train.runs import list_runs, plan_run, runs_table
from tests.conftest import REPO

TINY = str(REPO / "configs" / "model" / "tiny.yml")


def dataset(root: Path, key: str, tokenizer: str = "tok-1") -> str:
    """A stage output the planner accepts: a tokenize manifest (no files) with the tokenizer's hash and size."""
    folder = root / "tokenize" / key
    folder.mkdir(parents=True)
    manifest = {
        "stage": "tokenize",
        "key": key,
        "files": {},
        "inputs": {"tokenizer": tokenizer},
        "stats": {"vocab_size": 300},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


def config(tmp_path: Path, data_key: str = "data-1", **train) -> TrainConfig:
    values = {"model": (TINY,), "data": dataset_of(tmp_path, data_key), "name": "base", "seq_length": 64}
    return TrainConfig(**{**values, "storage_path": str(tmp_path / "runs"), "train_iters": 30, **train})


def dataset_of(tmp_path: Path, key: str) -> str:
    folder = tmp_path / "tokenize" / key
    return str(folder) if folder.exists() else dataset(tmp_path, key)


def stopped_at(cfg: TrainConfig, step: int, continued_from: dict | None = None) -> Path:
    """A run folder as training leaves it: run.json and one checkpoint at `step`."""
    plan = plan_run(cfg, continued_from=continued_from)
    run = Path(plan.storage.uri)
    (run / "checkpoint_000001" / DEEPSPEED_TAG).mkdir(parents=True)
    (run / "checkpoint_000001" / STATE_FILE).write_text(json.dumps({"step": step}))
    (run / RUN_FILE).write_text(json.dumps(plan.record()))
    return run


def test_neox_runs_lists_keyed_and_legacy_runs(tmp_path):
    run = stopped_at(config(tmp_path), 10)
    (tmp_path / "runs" / "tiny-local" / "checkpoint_000001").mkdir(parents=True)  # from before runs were keyed
    listed = {r.label: r for r in list_runs(str(tmp_path / "runs"))}
    assert (listed["base"].key, listed["base"].status, listed["base"].step) == (run.name, "stopped", 10)
    assert listed["tiny-local"].status == "legacy" and listed["tiny-local"].key == "-"
    table = runs_table(list(listed.values())).splitlines()
    assert table[0].split() == ["KEY", "LABEL", "STATUS", "STEP", "DATA", "FINAL", "CHECKPOINT"]
    assert table[1].split()[:4] == [run.name, "base", "stopped", "10/30"]


def test_a_run_whose_run_json_is_damaged_is_listed_as_unreadable_and_never_continued(tmp_path):
    cfg = config(tmp_path)
    damaged = stopped_at(cfg, 10)
    for damage in ('{"label": "base", "ident', b"\xff\xfe", '{"label": "base", "identity": null}'):
        (damaged / RUN_FILE).write_bytes(damage if isinstance(damage, bytes) else damage.encode())
        (listed,) = list_runs(str(tmp_path / "runs"))  # the other runs are still listed, and this one with them
        assert (listed.status, listed.key, listed.step, listed.record) == (f"unreadable {RUN_FILE}", "-", 10, None)
        with pytest.raises(RunStateError, match="no run labelled 'base'"):
            continued_run(plan_run(config(tmp_path, "data-2")), allow_new_data=True)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="storage path .*a-file is a file, not a folder of runs"):
        list_runs(str(tmp_path / "a-file"))


def test_a_run_on_another_dataset_is_continued_only_with_allow_new_data(tmp_path):
    first = stopped_at(config(tmp_path), 30)
    other = plan_run(config(tmp_path, "data-2", train_iters=40))
    with pytest.raises(RunStateError, match="trained on another dataset .*pass --allow-new-data"):
        continued_run(other, allow_new_data=False)
    plan, start = continued_run(other, allow_new_data=True)
    assert plan.identity["continued_from"] == {"run": first.name, "step": 30} and plan.key != other.key
    assert start == str(first / "checkpoint_000001")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": 5e-4}, "differs in .*train.lr.*can change only"),  # AdamW's lr would come back from the checkpoint
        ({"num_workers": 4}, "trained in another layout \\(num_workers\\)"),  # the checkpoint's ZeRO layout
        ({"train_iters": 30}, "train_iters 30 is not past step 30"),
    ],
)
def test_a_continued_run_changes_only_the_data_and_the_schedule_length(tmp_path, change, message):
    stopped_at(config(tmp_path), 30)
    with pytest.raises(RunStateError, match=message):
        continued_run(plan_run(config(tmp_path, "data-2", **{"train_iters": 40, **change})), allow_new_data=True)


def test_another_model_is_never_continued(tmp_path):
    stopped_at(config(tmp_path), 30)
    wider = tmp_path / "wider.yml"
    wider.write_text(Path(TINY).read_text().replace('"hidden_size": 64', '"hidden_size": 128'))
    with pytest.raises(RunStateError, match="model differs \\(.*hidden_size"):
        continued_run(plan_run(config(tmp_path, model=(str(wider),))), allow_new_data=True)


def test_a_stopped_continued_run_is_found_again_by_the_config_that_started_it(tmp_path):
    first = stopped_at(config(tmp_path), 30)
    cfg = config(tmp_path, "data-2", train_iters=40)
    continued = stopped_at(cfg, 35, continued_from={"run": first.name, "step": 30})
    found = continuation_of(plan_run(cfg))
    assert found is not None and Path(found.storage.uri) == continued


def test_blended_datasets_must_share_a_tokenizer_and_their_keys_and_weights_make_the_run_key(tmp_path):
    first, second = dataset(tmp_path, "data-1"), dataset(tmp_path, "data-2")
    plan = plan_run(config(tmp_path, data=(first, second), data_weights=(3.0, 1.0)))
    assert plan.identity["data"] == [["data-1", 0.75], ["data-2", 0.25]]
    assert plan.key != plan_run(config(tmp_path, data=(first, second))).key  # other weights, another run
    other = dataset(tmp_path, "data-3", tokenizer="tok-2")
    with pytest.raises(ConfigError, match="tokenized with another tokenizer"):
        plan_run(config(tmp_path, data=(first, other)))


def test_the_workers_own_error_reaches_the_command_unwrapped_only_when_every_failed_worker_raised_one():
    from ray.train import ControllerError, WorkerGroupError

    from neox.train.launch import neox_error_of

    ours, theirs = RunStateError("step 10: failing on purpose"), RuntimeError("NCCL timeout")
    assert neox_error_of(WorkerGroupError("", {0: ours, 1: RunStateError("the same, on rank 1")})) is ours
    assert neox_error_of(WorkerGroupError("", {0: ours, 1: theirs})) is None  # a mix is Ray's to show
    assert neox_error_of(WorkerGroupError("", {})) is None
    assert neox_error_of(ControllerError(ours)) is None
