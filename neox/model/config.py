"""The typed model config and the loader for GPT-NeoX YAML configs as EleutherAI ships them.

GPT-NeoX configs are YAML written like JSON: keys with `_` or `-`, Python-style `True`, trailing commas,
`#` comments, and often several files merged into one run. `load_neox_yaml` reads one or more such files;
`ModelConfig.from_neox` keeps the keys that shape the model, validates their types, and hands back every
other key untouched so later stages (training, data) read what they own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from neox.errors import ConfigError
from neox.pipeline.configfile import check_type, read_yaml_mapping

log = logging.getLogger(__name__)

InitMethod = Literal["normal", "scaled_normal", "small_init", "wang_init"]

# Keys GPT-NeoX defines that the model does not read (training, data, logging, launch). They are kept for
# the stages that own them and not reported; any key in neither set is reported as unknown (likely a typo).
KNOWN_NON_MODEL_KEYS = frozenset(
    """
    pipe_parallel_size output_layer_parallelism attention_config sparsity_config
    scaled_upper_triang_masked_softmax_fusion scaled_masked_softmax_fusion rope_fusion
    optimizer min_lr zero_optimization train_micro_batch_size_per_gpu train_batch_size gas
    gradient_accumulation_steps data_impl num_workers checkpoint_activations checkpoint_num_layers
    partition_activations synchronize_each_layer contiguous_checkpointing gradient_clipping weight_decay
    precision fp16 bf16 fp32_allreduce train_iters lr_decay_iters lr_decay_style warmup distributed_backend
    checkpoint_factor extra_save_iters eval_interval eval_iters log_interval steps_per_print keep_last_n_checkpoints
    wall_clock_breakdown train_data_paths valid_data_paths test_data_paths data_path train_data_weights
    valid_data_weights test_data_weights split tokenizer_type vocab_file merge_file save load
    checkpoint_validation_with_forward_pass launcher deepspeed_slurm hostfile include master_port
    tensorboard_dir log_dir use_wandb wandb_group wandb_team wandb_project wandb_host seed
    memory_efficient_layer_norm zero_allow_untested_optimizer checkpoint_scale num_kv_heads
    make_vocab_size_divisible_by model_parallel_size
    """.split()
)


def pad_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int = 128, model_parallel_size: int = 1) -> int:
    """The embedding rows GPT-NeoX allocates: the tokenizer's size rounded up to a multiple of
    `make_vocab_size_divisible_by * model_parallel_size` (so each tensor-parallel shard is aligned)."""
    multiple = make_vocab_size_divisible_by * model_parallel_size
    return int(math.ceil(vocab_size / multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The GPT-NeoX architecture, field names as in GPT-NeoX's YAML (underscore form)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int  # embedding rows, already padded (see pad_vocab_size)
    max_position_embeddings: int = 2048
    intermediate_size: int | None = None  # None: 4 * hidden_size
    rotary_pct: float = 1.0
    rotary_emb_base: int = 10000
    gpt_j_residual: bool = False
    no_weight_tying: bool = False
    # GPT-NeoX's fused bias+GELU kernel computes the tanh approximation; so does every Pythia/20B run.
    bias_gelu_fusion: bool = False
    layernorm_epsilon: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method: InitMethod = "normal"
    output_layer_init_method: InitMethod = "scaled_normal"
    init_method_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            heads = self.num_attention_heads
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({heads})")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ConfigError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.rotary_ndims % 2:
            raise ConfigError(
                f"rotary_pct={self.rotary_pct} of head size {self.head_size} gives {self.rotary_ndims} rotary dims; "
                "rotate-half needs an even number"
            )
        for name in ("init_method", "output_layer_init_method"):
            if getattr(self, name) not in get_args(InitMethod):
                raise ConfigError(f"{name} must be one of {get_args(InitMethod)}, got {getattr(self, name)!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")

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

        `vocab_size` is the tokenizer's size; it is padded like GPT-NeoX does. Without it the dict must
        carry `vocab_size` (already padded, as our checkpoints store it).
        """
        rest = dict(raw)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in rest:
                values[field.name] = check_type(field.name, rest.pop(field.name), field.type)
        _check_architecture_switches(rest, values.get("num_attention_heads"))
        divisible_by = check_type("make_vocab_size_divisible_by", rest.pop("make_vocab_size_divisible_by", 128), "int")
        model_parallel = check_type("model_parallel_size", rest.pop("model_parallel_size", 1), "int")
        seq_length = rest.pop("seq_length", None)
        if seq_length is not None:
            seq_length = check_type("seq_length", seq_length, "int")
            values.setdefault("max_position_embeddings", seq_length)
            if seq_length > values["max_position_embeddings"]:
                raise ConfigError(
                    f"seq_length ({seq_length}) exceeds max_position_embeddings ({values['max_position_embeddings']})"
                )
            rest["seq_length"] = seq_length  # the data and training stages read it too
        if vocab_size is not None:
            values["vocab_size"] = pad_vocab_size(vocab_size, divisible_by, model_parallel)
        missing = [n for n in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size") if n not in values]
        if missing:
            hint = " (pass the tokenizer's vocabulary size, e.g. --vocab-size)" if missing == ["vocab_size"] else ""
            raise ConfigError(f"model config is missing {', '.join(missing)}{hint}")
        rest["make_vocab_size_divisible_by"] = divisible_by
        rest["model_parallel_size"] = model_parallel
        unknown = sorted(k for k in rest if k not in KNOWN_NON_MODEL_KEYS | _SWITCHES.keys() | {"seq_length"})
        if unknown:
            log.warning("config keys not known to GPT-NeoX or neox-pipeline (kept, unused): %s", ", ".join(unknown))
        return cls(**values), rest

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


class _NeoXLoader(yaml.SafeLoader):
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
