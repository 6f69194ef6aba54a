"""The run layout: where a run's final model, its Hugging Face export and its newest DeepSpeed checkpoint are."""

from __future__ import annotations

from neox.pipeline.layout import (
    DEEPSPEED_TAG,
    final_hf,
    final_model,
    hf_export_of,
    newest_checkpoint,
    run_of,
)


def test_a_runs_final_model_leads_back_to_the_run_and_its_export(tmp_path):
    run = tmp_path / "train" / "demo"
    assert run_of(final_model(run)) == run and hf_export_of(final_model(run)) == final_hf(run)
    assert run_of(tmp_path / "init-model") is None  # a checkpoint not made by a training run


def test_newest_checkpoint_is_a_folder_holding_a_deepspeed_checkpoint(tmp_path):
    assert newest_checkpoint(tmp_path / "missing") is None
    for name in ("checkpoint_2026-12-01_10-00-00.000001", "checkpoint_2026-12-01_11-00-00.000002"):
        (tmp_path / name / DEEPSPEED_TAG).mkdir(parents=True)
    (tmp_path / "checkpoint_2026-12-01_12-00-00.000003").mkdir()  # being uploaded: no DeepSpeed files yet
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")  # sorts last, and is Ray's, not a checkpoint
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoint_2026-12-01_11-00-00.000002"
