"""Reading config files, and the one mechanism every config section is typed and checked with.

A section is a frozen pydantic dataclass declared with `@section` (unknown keys refused, a docstring under each
field that becomes its description in the JSON Schema and docs/configuration.md) whose scalar fields use the
strict types below: YAML's `"5"` is not an int and `true` is not a number. `parse(cls, raw, "data.dedup")`
builds one from a mapping or raises a `ConfigError` listing every problem by its dotted path, with the nearest
valid key for a typo (`data.dedup.thresold: unknown key (did you mean threshold?)`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from neox.errors import ConfigError

T = TypeVar("T")

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an int is a valid float, a string or a bool is not
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Positive = Annotated[int, Strict(), Field(ge=1)]
NonNegative = Annotated[int, Strict(), Field(ge=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
PlainName = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]  # a file or folder name

SECTION_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


def section(cls: type[T]) -> type[T]:
    """Make `cls` a config section: a frozen dataclass validated by pydantic, unknown keys refused. A key given no
    value (YAML's `dedup:`) takes its default (every nullable field defaults to null)."""

    def empty_means_default(values: Any) -> Any:
        return {k: v for k, v in values.items() if v is not None} if isinstance(values, dict) else values

    cls._empty_means_default = model_validator(mode="before")(empty_means_default)
    return dataclass(frozen=True, config=SECTION_CONFIG)(cls)


def parse(cls: type[T], raw: Any, where: str = "") -> T:
    """`cls` from a mapping (None counts as empty), or a ConfigError naming each problem by its dotted path."""
    try:
        return TypeAdapter(cls).validate_python({} if raw is None else raw)
    except ValidationError as err:
        raise ConfigError("\n".join(describe(cls, where, problem) for problem in err.errors())) from None


def as_mapping(value: Any) -> dict[str, Any]:
    """A section as the mapping a config file holds (keys by their YAML names: `from`, not `source`)."""
    return TypeAdapter(type(value)).dump_python(value, by_alias=True)


def describe(cls: type, where: str, problem: dict[str, Any]) -> str:
    """One line for one pydantic error: the dotted path, what is wrong, and for a typo the nearest key."""
    loc = [str(part) for part in problem["loc"]]
    path = ".".join(p for p in (where, *loc) if p) or "the config"
    if problem["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        known = field_names(type_at(cls, problem["loc"][:-1]))
        guess = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f"did you mean {guess[0]}?" if guess else f"known: {', '.join(sorted(known))}"
        return f"{path}: unknown key ({hint})"
    if problem["type"] == "value_error":  # a section's own cross-field check: its message says it all
        return f"{path}: {problem['msg'].removeprefix('Value error, ')}"
    if problem["type"] in ("dataclass_type", "model_type", "dict_type"):
        return f"{path}: must be a mapping of keys, got {problem.get('input')!r}"
    if problem["type"] in ("tuple_type", "list_type"):
        return f"{path}: must be a list, got {problem.get('input')!r}"
    return f"{path}: {problem['msg'][0].lower()}{problem['msg'][1:]}, got {problem.get('input')!r}"


def type_at(cls: Any, loc: tuple) -> Any:
    """The type a location inside `cls` holds (following fields, list items and optional values)."""
    for part in loc:
        cls = unwrap(cls)
        if dataclasses.is_dataclass(cls) and isinstance(part, str):
            hints = typing.get_type_hints(cls, include_extras=True)
            fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
            aliases = {alias_of(f): f.name for f in dataclasses.fields(cls)}
            cls = fields.get(part) or fields.get(aliases.get(part, ""), Any)
        elif typing.get_args(cls):
            cls = typing.get_args(cls)[0]
    return unwrap(cls)


def unwrap(cls: Any) -> Any:
    """The type inside `Annotated[...]` and `X | None`."""
    while True:
        if typing.get_origin(cls) is Annotated:
            cls = typing.get_args(cls)[0]
        elif typing.get_origin(cls) in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(cls) if a is not type(None)]
            if len(rest) != 1:
                return cls
            cls = rest[0]
        else:
            return cls


def alias_of(field: dataclasses.Field) -> str:
    default = field.default
    return getattr(default, "alias", None) or field.name


def field_names(cls: Any) -> list[str]:
    return [alias_of(f) for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader, except that a key given twice in one mapping with different values is an error: YAML keeps the
    last silently, so a second `train:` section would drop the first's keys (merge keys `<<` may still be
    overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, tuple[int, Any]] = {}  # key -> (its first line, its value)
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # what a merge key brings may be overridden
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's error, below
            value = self.construct_object(value_node, deep=True)
            if key not in seen:
                seen[key] = (key_node.start_mark.line + 1, value)
                continue
            first, earlier = seen[key]
            if (type(earlier), earlier) != (type(value), value):  # typed: 1, 1.0 and true are equal in Python
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{key!r} is given twice (first on line {first}) with different values",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: str | Path, kind: str = "YAML", loader: type = UniqueKeyLoader) -> dict[str, Any]:
    """A YAML file that must hold a mapping, with the file named in every error."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=loader)  # SafeLoader or a subclass: no Python objects
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:  # a folder, a binary file, no permission
        raise ConfigError(f"{path} cannot be read as a {kind} file: {err}") from None
    except yaml.MarkedYAMLError as err:  # in one line: where, then what
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = ", ".join(part for part in (err.context, err.problem) if part)
        raise ConfigError(f"{path} is not valid {kind}{where}: {what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid {kind}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def read_pipeline_config(path: str | Path) -> dict[str, Any]:
    """A pipeline config file: `work_root:`, `data:`, `train:`, `eval:`, `registry:` and `retrain:` sections."""
    return read_yaml_mapping(path, "pipeline YAML")
