"""The training stage's typed config.

Defaults come from the GPT-NeoX model YAML (its optimizer, schedule, batch and ZeRO keys, as EleutherAI's
configs carry them), and the `train:` section of a pipeline config overrides them by our names.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from neox.errors import ConfigError
from neox.model.config import load_neox_yaml
from neox.pipeline.configfile import check_type, read_pipeline_config

Precision = Literal["fp32", "bf16", "fp16"]
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: tuple[str, ...]  # GPT-NeoX YAML file(s)
    data: str | None = None  # a tokenize stage output directory
    # start from these weights (a neox checkpoint, e.g. a run's final/model); optimizer and schedule start fresh
    init_from: str | None = None
    name: str = "neox"  # the run's name under storage_path
    storage_path: str = "work/train"  # Ray Train storage: a local directory or s3://bucket/prefix
    split: str = "969,30,1"
    seq_length: int = 2048
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    train_iters: int = 100
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup: float = 0.01  # fraction of lr_decay_iters
    lr_decay_iters: int | None = None  # default: train_iters
    lr_decay_style: str = "cosine"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    gradient_clipping: float = 1.0
    zero_stage: int = 1
    precision: Precision = "fp32"
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the model inside the DeepSpeed engine
    log_interval: int = 10
    eval_interval: int = 100
    eval_iters: int = 10
    checkpoint_interval: int = 100
    seed: int = 1234
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    max_failures: int = 0
    num_to_keep: int = 2
    ray_address: str | None = None
    env: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # environment of every training worker (NCCL/EFA settings)
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_experiment: str = "neox-pipeline"

    def __post_init__(self) -> None:
        positive = (
            "seq_length",
            "micro_batch_size",
            "gradient_accumulation_steps",
            "train_iters",
            "log_interval",
            "eval_interval",
            "eval_iters",
            "checkpoint_interval",
            "num_workers",
            "cpus_per_worker",
            "num_to_keep",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"train.warmup is a fraction of lr_decay_iters in [0, 1), got {self.warmup}")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) exceeds train.lr ({self.lr})")
        if not self.model:
            raise ConfigError("train.model must name at least one GPT-NeoX model YAML")
        if not isinstance(self.env, dict):
            raise ConfigError(f"train.env maps environment variable names to values, got {self.env!r}")
        for name, value in self.env.items():
            if not (isinstance(name, str) and ENV_NAME.fullmatch(name)) or not isinstance(value, str):
                raise ConfigError(
                    f"train.env: {name!r}: {value!r} is not an environment variable name and a string value"
                )

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.num_workers

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.train_iters

    @property
    def warmup_iters(self) -> int:
        return int(self.warmup * self.decay_iters)


def _from_gpt_neox(neox: dict[str, Any]) -> dict[str, Any]:
    """Our training fields from the GPT-NeoX keys of a model YAML."""
    out: dict[str, Any] = {}
    params = (neox.get("optimizer") or {}).get("params") or {}
    if "lr" in params:
        out["lr"] = check_type("optimizer.params.lr", params["lr"], "float")
    if "betas" in params:
        out["betas"] = tuple(check_type("optimizer.params.betas", b, "float") for b in params["betas"])
    if "eps" in params:
        out["eps"] = check_type("optimizer.params.eps", params["eps"], "float")
    direct = {
        "min_lr": "min_lr",
        "weight_decay": "weight_decay",
        "gradient_clipping": "gradient_clipping",
        "train_iters": "train_iters",
        "lr_decay_iters": "lr_decay_iters",
        "warmup": "warmup",
        "lr_decay_style": "lr_decay_style",
        "seq_length": "seq_length",
        "seed": "seed",
        "split": "split",
        "log_interval": "log_interval",
        "eval_interval": "eval_interval",
        "eval_iters": "eval_iters",
        "train_micro_batch_size_per_gpu": "micro_batch_size",
        "gradient_accumulation_steps": "gradient_accumulation_steps",
        "gas": "gradient_accumulation_steps",
        "checkpoint_factor": "checkpoint_interval",
        "checkpoint_activations": "activation_checkpointing",
        "precision": "precision",
    }
    for key, field in direct.items():
        if key in neox:
            out[field] = neox[key]
    if "stage" in (neox.get("zero_optimization") or {}):
        out["zero_stage"] = neox["zero_optimization"]["stage"]
    if out.get("precision") == "float32":
        out["precision"] = "fp32"
    return out


def build_train_config(section: dict[str, Any], base_dir: Path = Path(".")) -> TrainConfig:
    """TrainConfig from a pipeline config's `train:` section: GPT-NeoX defaults from its model YAML(s), then
    the section's own keys. Unknown keys are an error (a typo would otherwise train the wrong thing)."""
    section = dict(section)
    model = section.get("model")
    if not model:
        raise ConfigError("train.model must name at least one GPT-NeoX model YAML")
    models = tuple(
        str(base_dir / m) if not Path(m).is_absolute() else m for m in ([model] if isinstance(model, str) else model)
    )
    section["model"] = models
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"unknown train config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = _from_gpt_neox(load_neox_yaml(*models))
    values.update(section)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    if isinstance(
        values.get("env"), dict
    ):  # YAML reads `FI_EFA_USE_DEVICE_RDMA: 1` as a number; the environment holds text
        values["env"] = {
            k: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in values["env"].items()
        }
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{key: check_type(f"train.{key}", value, fields[key]) for key, value in values.items()})


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The `train:` section of a pipeline config file (model YAML paths in it are relative to the file)."""
    raw = read_pipeline_config(path)
    if not isinstance(raw.get("train"), dict):
        raise ConfigError(f"{path} has no `train:` section")
    section = {**raw["train"], **(overrides or {})}
    return build_train_config(section, base_dir=Path(path).parent)
