"""The pipeline config's JSON Schema and its reference page (docs/configuration.md), both generated from the
types in `neox.pipeline.config`, so the docs cannot drift from what `neox check` accepts."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from pydantic import TypeAdapter

from neox.pipeline.config import PipelineConfig
from neox.pipeline.configfile import unwrap
from neox.train.identity import RUN_CONTROL

HEADER = """# Configuration reference

Generated from the config types by `neox config docs` (a test checks it is current); `neox config schema`
writes the same as JSON Schema, for editors. A pipeline config is YAML with the sections below; every key is
optional unless marked required. Unknown keys are errors at any depth, and `neox check CONFIG` checks a whole
file, including the model YAML, without running anything. Keys of `train:` left out take the model YAML's
GPT-NeoX values first (its optimizer, schedule, batch, ZeRO and precision keys), then the defaults below.
A training run is identified by every `train:` key that changes the weights (with the resolved model, the
dataset's key and the starting weights): change one and the pipeline trains a new run beside the old; the keys
marked *run control* can change without that.
"""


def json_schema() -> dict[str, Any]:
    return TypeAdapter(PipelineConfig).json_schema(by_alias=True)


def markdown() -> str:
    schema = json_schema()
    parts = [HEADER]
    render(schema, schema, "", parts, sections(PipelineConfig))
    return "\n".join(parts).rstrip() + "\n"


def sections(cls: type, found: dict[str, type] | None = None) -> dict[str, type]:
    """Every section class reachable from `cls`, by name (the JSON Schema's $defs titles)."""
    found = {} if found is None else found
    found[cls.__name__] = cls
    for hint in typing.get_type_hints(cls, include_extras=True).values():
        for inner in (unwrap(hint), *map(unwrap, typing.get_args(unwrap(hint)))):
            if dataclasses.is_dataclass(inner) and inner.__name__ not in found:
                sections(inner, found)
    return found


def field_description(cls: type | None, key: str) -> str:
    """A field's docstring, looked up through base sections too (pydantic reads only a class's own)."""
    for base in cls.__mro__ if cls else ():
        info = getattr(base, "__pydantic_fields__", {}).get(key)
        if info is not None and info.description:
            return info.description
    return ""


def render(schema: dict, node: dict, path: str, parts: list[str], classes: dict[str, type]) -> None:
    """One table per section (a JSON Schema object), then the sections inside it, depth first."""
    title = f"`{path}`" if path else "Top level"
    parts += [f"## {title}", "", node.get("description", "").strip(), ""]
    parts += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    required, nested = set(node.get("required", ())), []
    for key, prop in node["properties"].items():
        target, listed = section_of(schema, prop), section_of(schema, prop.get("items", {}))
        where = f"`{path + '.' if path else ''}{key}` below"
        if target is not None:
            nested.append((key, target))
            kind, default = f"section ({where})", ""
        elif listed is not None:
            nested.append((key, listed))
            kind, default = f"list of mappings ({where})", json.dumps(prop.get("default", []))
        else:
            kind, default = type_of(prop), json.dumps(prop["default"]) if "default" in prop else ""
        text = prop.get("description") or field_description(classes.get(node.get("title", "")), key)
        meaning = " ".join(text.split()).replace("|", "\\|")
        if path == "train" and key in RUN_CONTROL:
            meaning += " *Run control: changing it keeps the same run.*"
        parts.append(f"| `{key}`{' (required)' if key in required else ''} | {kind} | {default} | {meaning} |")
    parts.append("")
    for key, target in nested:
        render(schema, target, f"{path}.{key}" if path else key, parts, classes)


def section_of(schema: dict, prop: dict) -> dict | None:
    """The section a property holds (directly or as an optional section), or None for a plain value."""
    for candidate in (prop, *prop.get("anyOf", ())):
        if "$ref" in candidate:
            return schema["$defs"][candidate["$ref"].rsplit("/", 1)[1]]
    return None


def type_of(prop: dict) -> str:
    if "anyOf" in prop:
        options = [type_of(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(options) + (" or null" if len(options) < len(prop["anyOf"]) else "")
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    kind = prop.get("type", "any")
    if kind == "array" and "prefixItems" in prop:
        return "[" + ", ".join(type_of(p) for p in prop["prefixItems"]) + "]"
    if kind == "array":
        return f"list of {type_of(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping to {type_of(prop['additionalProperties'])}"
    limits = [
        f"{sign} {prop[name]}"
        for name, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
        if name in prop
    ]
    if "pattern" in prop:
        limits.append(f"matching `{prop['pattern']}`")
    if "minLength" in prop:
        limits.append("not empty")
    return kind + (f" ({', '.join(limits)})" if limits else "")
