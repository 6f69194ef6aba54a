"""Reading config files: a YAML file that must hold a mapping (the file named in every error), and a YAML value
checked against a dataclass field's annotation (the key named in every error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from neox.errors import ConfigError


def check_type(key: str, value: Any, annotation: Any) -> Any:
    """Check a YAML value against a dataclass field's annotation ("int", "float | None", ...), or raise naming
    the key. Other annotations (literals, tuples) are left to the dataclass's own validation."""
    annotation = str(annotation)
    if value is None and annotation.endswith("| None"):
        return None
    base = annotation.split(" |")[0]
    if base not in ("bool", "int", "float", "str"):
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base == "str" and isinstance(value, str):
        return value
    expected = annotation.replace(" | None", " or null")
    raise ConfigError(f"config key {key!r} must be {expected}, got {value!r} ({type(value).__name__})")


def read_yaml_mapping(path: str | Path, kind: str = "YAML", loader: type = yaml.SafeLoader) -> dict[str, Any]:
    """A YAML file that must hold a mapping, with the file named in every error."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=loader)  # SafeLoader or a subclass: no Python objects
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:  # a folder, a binary file, no permission
        raise ConfigError(f"{path} cannot be read as a {kind} file: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid {kind}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def read_pipeline_config(path: str | Path) -> dict[str, Any]:
    """A pipeline config file: `work_root:`, `data:`, `train:`, `eval:`, `registry:` and `retrain:` sections."""
    return read_yaml_mapping(path, "pipeline YAML")
