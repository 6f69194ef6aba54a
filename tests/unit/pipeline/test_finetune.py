"""The base a fine-tune starts from: a neox checkpoint as given, a Hugging Face folder imported once, a registered
version by alias or number; anything else a clear error."""

import os

import pytest

from neox.errors import ConfigError, MissingInput
from neox.model.checkpoint import save_model
from neox.model.hf import export_hf
from neox.pipeline.finetune import resolve_base
from tests.conftest import tiny_model


@pytest.fixture
def checkpoint(tmp_path, tokenizer_file):
    return save_model(tiny_model(), tmp_path / "ckpt", tokenizer_file=tokenizer_file)


def test_a_neox_checkpoint_is_the_base_as_given(tmp_path, checkpoint):
    base = resolve_base(str(checkpoint), tmp_path / "work", "sqlite:///unused.db")
    assert base.checkpoint == checkpoint.resolve() and base.uri == str(checkpoint.resolve())
    assert base.registered_name is None


def test_a_hugging_face_folder_is_imported_once_into_the_work_root(tmp_path, checkpoint):
    hf = export_hf(checkpoint, tmp_path / "hf")
    first = resolve_base(str(hf), tmp_path / "work", "sqlite:///unused.db")
    assert first.checkpoint.parent == (tmp_path / "work" / "import").resolve() and first.uri == str(hf.resolve())
    assert (first.checkpoint / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    imported_at = os.stat(first.checkpoint / "model.safetensors").st_mtime_ns
    again = resolve_base(str(hf), tmp_path / "work", "sqlite:///unused.db")
    assert again == first and os.stat(again.checkpoint / "model.safetensors").st_mtime_ns == imported_at


def test_a_folder_that_is_no_model_or_lacks_a_tokenizer_is_refused(tmp_path, checkpoint):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInput, match="not a neox checkpoint"):
        resolve_base(str(tmp_path / "empty"), tmp_path / "work", "sqlite:///unused.db")
    (checkpoint / "tokenizer.json").unlink()
    with pytest.raises(MissingInput, match="has no tokenizer.json"):
        resolve_base(str(checkpoint), tmp_path / "work", "sqlite:///unused.db")


def test_a_registered_version_is_its_evaluated_checkpoint_by_alias_or_number(tmp_path, checkpoint):
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking)
    client.create_registered_model("base")
    for path in (tmp_path / "gone", checkpoint):
        client.create_model_version("base", str(tmp_path), tags={"neox.checkpoint": str(path)})
    client.set_registered_model_alias("base", "champion", "2")
    by_alias = resolve_base("models:/base@champion", tmp_path / "work", tracking)
    assert by_alias.checkpoint == checkpoint and by_alias.uri == "models:/base/2"  # the version, not the alias
    assert by_alias.registered_name == "base"
    with pytest.raises(MissingInput, match="is version 1, whose checkpoint .* is gone"):
        resolve_base("models:/base/1", tmp_path / "work", tracking)
    with pytest.raises(MissingInput, match="no such model version"):
        resolve_base("models:/base/7", tmp_path / "work", tracking)


def test_a_fine_tune_registers_under_its_own_name(tmp_path):
    from neox.pipeline.config import load_pipeline_config
    from tests.conftest import REPO

    text = (
        (REPO / "configs" / "pipeline" / "finetune.yaml").read_text().replace("name: neox-tiny-sft", "name: neox-tiny")
    )
    (tmp_path / "finetune.yaml").write_text(text.replace("../model/tiny.yml", str(REPO / "configs/model/tiny.yml")))
    with pytest.raises(ConfigError, match="register the fine-tune under its own name"):
        load_pipeline_config(tmp_path / "finetune.yaml")


def test_response_scoring_is_refused_through_lm_evals_hf_model(tmp_path):
    from neox.pipeline.config import load_pipeline_config
    from tests.conftest import REPO

    text = (REPO / "configs" / "pipeline" / "finetune.yaml").read_text().replace("  batch_size: 16", "  model: hf")
    (tmp_path / "finetune.yaml").write_text(text.replace("../model/tiny.yml", str(REPO / "configs/model/tiny.yml")))
    with pytest.raises(ConfigError, match="lm-eval's hf model moves the prompt's trailing whitespace"):
        load_pipeline_config(tmp_path / "finetune.yaml")
