"""Lineage tags of a checkpoint, read from its training run's folder."""

from __future__ import annotations

from urllib.parse import urlparse
from urllib.request import url2pathname

from neox.pipeline.layout import CONFIG_FILE, DEEPSPEED_TAG, MLFLOW_RUN_FILE, STATE_FILE, final_model
from neox.pipeline.stage import sha256_file
from neox.registry.lineage import lineage_tags


def test_the_deepspeed_checkpoint_tag_names_the_newest_checkpoint_folder_not_rays_snapshot(tmp_path):
    run = tmp_path / "train" / "demo"
    final_model(run).mkdir(parents=True)
    (final_model(run) / CONFIG_FILE).write_text("num_layers: 2\n")
    (run / MLFLOW_RUN_FILE).write_text("abc123\n")
    for step, name in ((10, "checkpoint_2026-12-01_10-00-00.000001"), (20, "checkpoint_2026-12-01_10-05-00.000002")):
        (run / name / DEEPSPEED_TAG).mkdir(parents=True)
        (run / name / STATE_FILE).write_text(f'{{"step": {step}}}')
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's; sorts after every checkpoint folder

    tags = lineage_tags(final_model(run), work_root=None)
    newest = url2pathname(urlparse(tags["neox.deepspeed_checkpoint"]).path)
    assert newest == str(run / "checkpoint_2026-12-01_10-05-00.000002")
    assert tags["neox.train_run_id"] == "abc123"
    assert tags["neox.model_config_sha256"] == sha256_file(final_model(run) / CONFIG_FILE)


def test_a_checkpoint_not_made_by_a_training_run_has_no_run_lineage(tmp_path):
    (tmp_path / "init" / CONFIG_FILE).parent.mkdir()
    (tmp_path / "init" / CONFIG_FILE).write_text("num_layers: 2\n")
    assert "neox.deepspeed_checkpoint" not in lineage_tags(tmp_path / "init", work_root=None)
