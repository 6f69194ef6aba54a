"""The config reference and JSON Schema are generated from the config types: the committed page is current, and
every shipped pipeline config is valid against the schema an editor would use."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from neox.pipeline.config_docs import json_schema, markdown
from tests.conftest import REPO


def test_docs_configuration_md_is_what_the_types_generate():
    assert (REPO / "docs" / "configuration.md").read_text() == markdown(), (
        "run: neox config docs --output docs/configuration.md"
    )


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "pipeline").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid_against_the_json_schema(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_the_schema_refuses_a_typo_as_neox_check_does():
    raw = yaml.safe_load((REPO / "configs" / "pipeline" / "local.yaml").read_text())
    raw["data"]["dedup"]["thresold"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="thresold"):
        jsonschema.validate(raw, json_schema())
