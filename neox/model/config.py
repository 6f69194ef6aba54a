"""The typed model config and the loader for GPT-NeoX YAML configs as EleutherAI ships them.

GPT-NeoX configs are YAML written like JSON: keys with `_` or `-`, Python-style `True`, trailing commas,
`#` comments, and often several files merged into one run. `load_neox_yaml` reads one or more such files;
`ModelConfig.from_neox` keeps the keys that shape the model, validates their types, and hands back every
other key untouched so later stages (training, data) read what they own.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, Strict

from neox.errors import ConfigError
from neox.model.gpt_neox_keys import GPT_NEOX_KEYS
from neox.pipeline.configfile import (
    Bool,
    Positive,
    PositiveFloat,
    UniqueKeyLoader,
    parse,
    read_yaml_mapping,
    section,
)

InitMethod = Literal["normal", "scaled_normal", "small_init", "wang_init"]
Dropout = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]


def pad_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int = 128, model_parallel_size: int = 1) -> int:
    """The embedding rows GPT-NeoX allocates: the tokenizer's size rounded up to a multiple of
    `make_vocab_size_divisible_by * model_parallel_size` (so each tensor-parallel shard is aligned)."""
    multiple = make_vocab_size_divisible_by * model_parallel_size
    return int(math.ceil(vocab_size / multiple) * multiple)


@section
class VocabPadding:
    """The GPT-NeoX keys that size the embedding and the positions, besides the model's own."""

    KEYS: ClassVar[tuple[str, ...]] = ("make_vocab_size_divisible_by", "model_parallel_size", "seq_length")
    make_vocab_size_divisible_by: Positive = 128
    model_parallel_size: Positive = 1
    seq_length: Positive | None = None


@section
class ModelConfig:
    """The GPT-NeoX architecture, field names as in GPT-NeoX's YAML (underscore form)."""

    num_layers: Positive
    hidden_size: Positive
    num_attention_heads: Positive
    vocab_size: Positive
    """Embedding rows, already padded (see pad_vocab_size)."""
    max_position_embeddings: Positive = 2048
    intermediate_size: Positive | None = None
    """Width of the MLP (default 4 x hidden_size)."""
    rotary_pct: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 1.0
    rotary_emb_base: Positive = 10000
    gpt_j_residual: Bool = False
    no_weight_tying: Bool = False
    bias_gelu_fusion: Bool = False
    """GPT-NeoX's fused bias+GELU kernel computes the tanh approximation; so does every Pythia/20B run."""
    layernorm_epsilon: PositiveFloat = 1e-5
    hidden_dropout: Dropout = 0.0
    attention_dropout: Dropout = 0.0
    init_method: InitMethod = "normal"
    output_layer_init_method: InitMethod = "scaled_normal"
    init_method_std: PositiveFloat = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            heads = self.num_attention_heads
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({heads})")
        if self.rotary_ndims % 2:
            raise ValueError(
                f"rotary_pct={self.rotary_pct} of head size {self.head_size} gives {self.rotary_ndims} rotary dims; "
                "rotate-half needs an even number"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_ndims(self) -> int:
        return int(self.head_size * self.rotary_pct)

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def gelu_approximate(self) -> Literal["none", "tanh"]:
        return "tanh" if self.bias_gelu_fusion else "none"

    @classmethod
    def from_neox(cls, raw: dict[str, Any], vocab_size: int | None = None) -> tuple[ModelConfig, dict[str, Any]]:
        """Build from a (normalized) GPT-NeoX config dict. Returns the model config and the keys it did not use.

        `vocab_size` is the tokenizer's size; it is padded like GPT-NeoX does, for the model YAML's
        model_parallel_size (a training run's own tensor-parallel size does not change the model's shape, so its
        checkpoints load into any layout). Without it the dict must carry `vocab_size` (already padded, as our
        checkpoints store it).
        """
        rest = dict(raw)
        values = {f.name: rest.pop(f.name) for f in dataclasses.fields(cls) if f.name in rest}
        _check_architecture_switches(rest, values.get("num_attention_heads"))
        sizes = parse(VocabPadding, {k: rest.pop(k) for k in VocabPadding.KEYS if k in rest})
        if vocab_size is not None:
            divisor = sizes.make_vocab_size_divisible_by
            values["vocab_size"] = pad_vocab_size(vocab_size, divisor, sizes.model_parallel_size)
        if sizes.seq_length is not None:
            values.setdefault("max_position_embeddings", sizes.seq_length)
            rest["seq_length"] = sizes.seq_length  # the data and training stages read it too
        missing = [n for n in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size") if n not in values]
        if missing:
            hint = " (pass the tokenizer's vocabulary size, e.g. --vocab-size)" if missing == ["vocab_size"] else ""
            raise ConfigError(f"model config is missing {', '.join(missing)}{hint}")
        cfg = parse(cls, values)
        if sizes.seq_length is not None and sizes.seq_length > cfg.max_position_embeddings:
            raise ConfigError(
                f"seq_length ({sizes.seq_length}) exceeds max_position_embeddings ({cfg.max_position_embeddings})"
            )
        rest["make_vocab_size_divisible_by"] = sizes.make_vocab_size_divisible_by
        rest["model_parallel_size"] = sizes.model_parallel_size
        check_known_keys(rest)
        return cfg, rest

    def to_neox(self) -> dict[str, Any]:
        """The GPT-NeoX-style dict that `from_neox` reads back to an equal config."""
        out = dataclasses.asdict(self)
        out.update(pos_emb="rotary", norm="layernorm", make_vocab_size_divisible_by=1)
        return out


# Architecture switches GPT-NeoX offers that this model implements only in one setting: a config asking
# for another is refused rather than silently trained as something else.
_SWITCHES: dict[str, Any] = {
    "pos_emb": "rotary",
    "norm": "layernorm",
    "activation": "gelu",
    "gpt_j_tied": False,
    "use_bias_in_norms": True,
    "use_bias_in_attn_linear": True,
    "apply_query_key_layer_scaling": False,
}


def check_known_keys(rest: dict[str, Any]) -> None:
    """Keys left after the model took its own must be gpt-neox's (training, data, logging, launch keys the other
    stages read or ignore): anything else is a typo, refused with the nearest known key."""
    known = GPT_NEOX_KEYS | _SWITCHES.keys() | {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(k for k in rest if k not in known)
    if unknown:
        raise ConfigError("; ".join(f"{key}: {unknown_key_hint(key, known)}" for key in unknown))


def unknown_key_hint(key: str, known: set[str]) -> str:
    guess = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"not a GPT-NeoX key (did you mean {guess[0]}?)" if guess else "not a GPT-NeoX key"


def _check_architecture_switches(rest: dict[str, Any], num_attention_heads: int | None) -> None:
    for key, supported in _SWITCHES.items():
        if key in rest and rest[key] != supported:
            raise ConfigError(
                f"{key}={rest[key]!r} is not supported by this GPT-NeoX implementation (only {supported!r})"
            )
    if rest.get("num_kv_heads") not in (None, num_attention_heads):
        raise ConfigError(
            "num_kv_heads (grouped-query attention) is not supported: GPT-NeoX models use full multi-head"
        )
    for kinds, _ in rest.get("attention_config") or []:
        if any(kind not in ("global", "flash") for kind in kinds):
            raise ConfigError(f"attention_config {kinds!r}: only dense attention ('global', 'flash') is supported")


class _NeoXLoader(UniqueKeyLoader):
    """YAML 1.1 reads `6e-4` (no dot) as a string; GPT-NeoX configs mean a float."""


_NeoXLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$"),
    list("-+0123456789."),
)


def normalize_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """GPT-NeoX accepts `hidden-size` and `hidden_size` alike; we use the underscore form (top level only,
    as GPT-NeoX does: nested DeepSpeed sections keep their own spelling)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        norm = str(key).replace("-", "_")
        if norm in out and out[norm] != value:
            raise ConfigError(f"config key {key!r} is given twice with different values ({out[norm]!r} vs {value!r})")
        out[norm] = value
    return out


def load_neox_yaml(*paths: str | Path) -> dict[str, Any]:
    """Read and merge GPT-NeoX YAML config files (later files override earlier ones, like `deepy.py a.yml b.yml`)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged.update(normalize_keys(read_yaml_mapping(path, "GPT-NeoX YAML", _NeoXLoader)))
    return merged


def load_model_config(*paths: str | Path, vocab_size: int | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """`load_neox_yaml` then `ModelConfig.from_neox`, with the file names in any error."""
    try:
        return ModelConfig.from_neox(load_neox_yaml(*paths), vocab_size=vocab_size)
    except ConfigError as err:
        if any(str(p) in str(err) for p in paths):
            raise
        raise ConfigError(f"{', '.join(map(str, paths))}: {err}") from None
