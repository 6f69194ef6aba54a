"""The training stage's typed config.

Defaults come from the GPT-NeoX model YAML (its optimizer, schedule, batch and ZeRO keys, as EleutherAI's
configs carry them), and the `train:` section of a pipeline config overrides them by our names.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Strict, WithJsonSchema

from neox.data.dataset import split_weights
from neox.errors import ConfigError
from neox.model.config import ModelConfig, load_neox_yaml
from neox.pipeline.configfile import (
    Bool,
    NonNegative,
    NonNegativeFloat,
    PlainName,
    Positive,
    PositiveFloat,
    Str,
    parse,
    read_pipeline_config,
    section,
)
from neox.runtime.tracking_uri import checked_tracking_uri, tracking_uri
from neox.train.lora import LoraConfig

Precision = Literal["fp32", "bf16", "fp16"]
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Fraction = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]
ONE_OR_MORE_PATHS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}


@section
class TrainConfig:
    """`train:`: the model YAML(s) whose GPT-NeoX optimizer, schedule, batch and ZeRO keys are the defaults, and
    the keys that override them."""

    model: Annotated[tuple[Str, ...], WithJsonSchema(ONE_OR_MORE_PATHS)]
    """GPT-NeoX model YAML file(s), relative to the pipeline config; later files override earlier ones."""
    data: Annotated[Str | tuple[Str, ...], WithJsonSchema(ONE_OR_MORE_PATHS)] | None = None
    """A tokenize stage output to train on (default: the data section's), or several, blended by data_weights
    (gpt-neox's train_data_paths)."""
    data_weights: tuple[NonNegativeFloat, ...] | None = None
    """The share of samples each train.data dataset gives, in order (gpt-neox's train_data_weights; default:
    equal). Validation blends the datasets' validation parts by the same weights."""
    init_from: Str | None = None
    """Start from these weights (a neox checkpoint, e.g. a run's final/model); optimizer and schedule start fresh."""
    name: PlainName = "neox"
    """The run's label, shown in MLflow, the console and `neox runs`; the run's folder is its key."""
    storage_path: Str = "work/train"
    """Where runs live (<storage_path>/<run key>/): a local or shared folder, or s3://bucket/prefix (neox train
    only)."""
    split: Str = "969,30,1"
    """Train, valid and test weights of the document split (gpt-neox's `split`); the part evaluation reads
    (eval.data.part) needs a weight. Not used on a dataset with named splits (data.valid_sources / test_sources),
    whose splits are its own."""
    seq_length: Positive = 2048
    """Tokens per training sequence (at most the model's max_position_embeddings)."""
    micro_batch_size: Positive = 4
    """Sequences per worker per forward pass."""
    gradient_accumulation_steps: Positive = 1
    """Micro-batches per optimizer step."""
    train_iters: Positive = 100
    """Optimizer steps."""
    lr: PositiveFloat = 6e-4
    """Peak learning rate."""
    min_lr: NonNegativeFloat = 6e-5
    """Learning rate at the end of the decay."""
    warmup: Fraction = 0.01
    """Warm-up, as a fraction of lr_decay_iters."""
    lr_decay_iters: Positive | None = None
    """Steps the learning rate decays over (default: train_iters)."""
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay."""
    weight_decay: NonNegativeFloat = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    """AdamW betas."""
    eps: PositiveFloat = 1e-8
    """AdamW epsilon."""
    gradient_clipping: NonNegativeFloat = 1.0
    """Global gradient norm clip (0: off)."""
    zero_stage: Literal[0, 1, 2, 3] = 1
    """DeepSpeed ZeRO stage (over the data-parallel ranks)."""
    model_parallel_size: Positive = 1
    """Tensor-parallel ranks per pipeline stage (gpt-neox's model_parallel_size): attention heads, the MLP and the
    vocabulary are split over this many consecutive workers."""
    pipe_parallel_size: Positive = 1
    """Pipeline stages per model replica (gpt-neox's pipe_parallel_size): the transformer layers are cut into this
    many stages run with DeepSpeed's 1F1B schedule. num_workers must be a multiple of model_parallel_size x
    pipe_parallel_size; the rest is data parallelism."""
    precision: Precision = "fp32"
    """fp32, bf16, or fp16 with dynamic loss scaling."""
    activation_checkpointing: Bool = False
    """Recompute each layer's activations in the backward pass instead of storing them."""
    compile: Bool = False
    """torch.compile the model inside the DeepSpeed engine (on the CPU, a parallel-residual model such as Pythia in
    fp32 only: torch's CPU compiler fails on a kernel of its bf16/fp16 backward)."""
    cross_entropy: Literal["full", "chunked", "liger"] = "full"
    """How the loss comes from the last hidden states: full (the whole batch x sequence x vocabulary logits, then
    cross-entropy), chunked (our fused linear + cross-entropy, a chunk of tokens at a time: never the full logits;
    CPU or GPU) or liger (liger-kernel's fused kernel; GPU, the `gpu` extra). Not with model or pipeline
    parallelism (the vocabulary-parallel loss applies there), nor ZeRO-3."""
    layer_norm: Literal["torch", "liger"] = "torch"
    """The LayerNorms' kernel: torch, or liger (liger-kernel's fused Triton kernel; GPU, the `gpu` extra; with
    compile only on torch 2.13 or newer: compiled on torch 2.11 its loss was NaN). The parameters and checkpoints are
    the same either way."""
    rotary: Literal["torch", "liger"] = "torch"
    """The rotary embedding's kernel: torch, or liger (liger-kernel's fused Triton kernel, which rotates Pythia's
    partial slice of each head in place; GPU, the `gpu` extra)."""
    fused_adamw: Bool = False
    """torch's fused AdamW (one kernel for every parameter's update; on the GPU, and on the CPU since torch 2.4)."""
    lora: LoraConfig | None = None
    """Train LoRA adapters (peft) on the linear layers instead of every weight; the final checkpoint has them merged
    in. Not with model or pipeline parallelism, nor ZeRO-3."""
    log_interval: Positive = 10
    """Steps between metric means in MLflow and on the console."""
    eval_interval: Positive = 100
    """Steps between validation losses."""
    eval_iters: Positive = 10
    """Batches per validation."""
    checkpoint_interval: Positive = 100
    """Steps between checkpoints."""
    seed: NonNegative = 1234
    """Seed of the initialisation and the sample order."""
    num_workers: Positive = 2
    """Ray Train workers (one per GPU, or per CPU slot)."""
    use_gpu: Bool = False
    """One GPU per worker."""
    cpus_per_worker: Positive = 1
    """CPUs per worker (its torch threads and torch.compile processes on CPU)."""
    max_failures: Annotated[int, Strict(), Field(ge=-1)] = 0
    """Worker-group restarts from the newest checkpoint Ray Train may make (-1: no limit). A run whose loss turned
    NaN is never restarted: it would only diverge again."""
    num_to_keep: Positive = 2
    """Checkpoints kept."""
    ray_address: Str | None = None
    """Ray cluster to train on (default: RAY_ADDRESS, else a local Ray)."""
    env: dict[Str, Str] = dataclasses.field(default_factory=dict)
    """Environment variables of every training worker, set before it starts (NCCL/EFA settings)."""
    mlflow_tracking_uri: Annotated[str, Strict(), AfterValidator(checked_tracking_uri)] | None = None
    """Where metrics, evals and the registry go: a sqlite:/// file or an http(s):// MLflow server. MLFLOW_TRACKING_URI
    overrides it; without either, sqlite:///mlflow.db."""
    mlflow_experiment: Str = "neox-pipeline"
    """MLflow experiment of the training run."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name at least one GPT-NeoX model YAML")
        split_weights(self.split)  # refuses a split that does not parse
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) exceeds lr ({self.lr})")
        if self.num_workers % (self.model_parallel_size * self.pipe_parallel_size):
            tp, pp = self.model_parallel_size, self.pipe_parallel_size
            raise ValueError(
                f"num_workers ({self.num_workers}) must be a multiple of model_parallel_size x pipe_parallel_size "
                f"({tp} x {pp})"
            )
        bad = [name for name in self.env if not ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"env: {', '.join(bad)} are not environment variable names")
        if isinstance(self.data, tuple) and not self.data:
            raise ValueError("data: give a tokenize stage output, or a list of at least one")
        if self.data_weights is not None:
            if not math.isfinite(sum(self.data_weights)) or sum(self.data_weights) <= 0:
                raise ValueError("data_weights: the weights must be finite, and at least one positive")
            if len(self.data_weights) != len(self.datasets):
                raise ValueError(f"data_weights: {len(self.data_weights)} weights for {len(self.datasets)} datasets")

    @property
    def datasets(self) -> tuple[str, ...]:
        """train.data as a tuple (empty when unset)."""
        return () if self.data is None else (self.data,) if isinstance(self.data, str) else self.data

    @property
    def weights(self) -> list[float]:
        """Each dataset's share of the samples, summing to 1."""
        weights = self.data_weights or (1.0,) * len(self.datasets)
        return [w / sum(weights) for w in weights]

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI to use (`neox.runtime.tracking_uri`: MLFLOW_TRACKING_URI first), absolute."""
        return tracking_uri(configured=self.mlflow_tracking_uri)

    @property
    def data_parallel_size(self) -> int:
        """Model replicas: the workers over the workers one replica needs."""
        return self.num_workers // (self.model_parallel_size * self.pipe_parallel_size)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.data_parallel_size

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.train_iters

    @property
    def warmup_iters(self) -> int:
        return int(self.warmup * self.decay_iters)


def check_layout(cfg: TrainConfig, model: ModelConfig) -> None:
    """Refuse a layout the model does not split into (whole heads, equal slices of the MLP and the padded
    vocabulary, at least one layer per stage) or that is not supported with it."""
    tp, pp = cfg.model_parallel_size, cfg.pipe_parallel_size
    sizes = {
        "num_attention_heads": model.num_attention_heads,
        "the MLP width": model.ffn_size,
        "the padded vocabulary": model.vocab_size,
    }
    bad = [f"{name} ({size})" for name, size in sizes.items() if size % tp]
    if bad:
        raise ConfigError(
            f"train.model_parallel_size {tp} does not divide {', '.join(bad)} (the vocabulary is padded for the "
            "model YAML's model_parallel_size)"
        )
    if tp > 1 and cfg.zero_stage == 3:
        raise ConfigError(
            "train.zero_stage 3 partitions the parameters itself; with model_parallel_size > 1 use stage 1 or 2 "
            "(gpt-neox trains tensor parallel with ZeRO-1)"
        )
    if tp > 1 and (model.hidden_dropout or model.attention_dropout):
        # the replicated activations need one dropout mask on every rank of a group, the split heads their own
        raise ConfigError(
            "dropout with model_parallel_size > 1 is not supported (it needs per-group random streams); "
            "Pythia and GPT-NeoX-20B train with hidden_dropout and attention_dropout 0"
        )
    if cfg.cross_entropy != "full" and (tp * pp > 1 or cfg.zero_stage == 3):
        raise ConfigError(
            f"train.cross_entropy {cfg.cross_entropy} needs model_parallel_size and pipe_parallel_size 1 and "
            "zero_stage 0 to 2 (tensor parallelism has its own vocabulary-parallel loss; ZeRO-3 splits the output "
            "layer's weight, which the fused loss reads whole)"
        )
    on_cpu = {"cross_entropy": "chunked", "layer_norm": "torch", "rotary": "torch"}
    for setting, cpu_choice in on_cpu.items():
        if getattr(cfg, setting) == "liger" and not cfg.use_gpu:
            raise ConfigError(f"train.{setting} liger runs on GPUs only (use_gpu: true); on the CPU use {cpu_choice}")
    if cfg.layer_norm == "liger" and cfg.compile and compile_drops_liger_layer_norm(torch_version := installed_torch()):
        raise ConfigError(
            f"train.layer_norm liger does not combine with train.compile on torch {torch_version}: torch before "
            "2.13 cannot analyse liger-kernel's LayerNorm kernel (its eps), and compiled the loss was NaN from the "
            "first step (torch 2.11 on an H200). Use the lock's torch 2.13, or with compile layer_norm torch "
            "(compile fuses it), or liger's without compile"
        )
    if cfg.compile and cfg.precision != "fp32" and not cfg.use_gpu and model.gpt_j_residual:
        # torch 2.13's CPU inductor writes a C++ kernel of the half-precision backward that does not build: the two
        # biases feeding the parallel residual get one gradient sum, stored twice under one name. Every step would
        # fail, after Ray and DeepSpeed started.
        raise ConfigError(
            f"train.compile with precision {cfg.precision} fails on the CPU for a parallel-residual model "
            "(gpt_j_residual, as Pythia): torch's inductor cannot build a kernel of its backward in that precision. "
            "On the CPU compile in fp32, or keep compile off"
        )
    if cfg.lora is not None and (tp * pp > 1 or cfg.zero_stage == 3):
        raise ConfigError(
            "train.lora trains with data parallelism only: model_parallel_size and pipe_parallel_size 1, zero_stage "
            "0 to 2 (adapters make a large model's optimizer state small; ZeRO-1/2 split what is left)"
        )
    if cfg.lora is not None and cfg.lora.r > model.hidden_size:
        raise ConfigError(
            f"train.lora.r {cfg.lora.r} exceeds the model's hidden_size {model.hidden_size}: an adapter's rank is at "
            "most its layer's narrower side (8 to 64 is usual)"
        )
    if cfg.compile and tp * pp > 1:
        raise ConfigError("train.compile is not supported with model_parallel_size or pipe_parallel_size > 1")
    if pp == 1:
        return
    if pp > model.num_layers:
        raise ConfigError(f"train.pipe_parallel_size {pp} exceeds the model's {model.num_layers} layers")
    if cfg.zero_stage != 1:
        raise ConfigError(
            f"train.zero_stage {cfg.zero_stage} with pipe_parallel_size > 1: use 1 (as gpt-neox does). ZeRO-2/3 do "
            "not combine with pipeline stages, and without ZeRO DeepSpeed's gradient norm leaves out the "
            "replicated parameters of every stage but the first"
        )
    if not model.no_weight_tying:
        raise ConfigError("pipe_parallel_size > 1 needs an untied output layer (no_weight_tying: true in the model)")


def installed_torch() -> str:
    import torch

    return str(torch.__version__)


def compile_drops_liger_layer_norm(torch_version: str) -> bool:
    """Whether torch.compile on `torch_version` fails to analyse liger-kernel's LayerNorm forward kernel, and may
    then drop it (its outputs left unwritten): NaN losses with torch 2.11 on an H200, whose analysis failed on the
    kernel's `eps.to(...)` with eps taken as a compile-time constant (pytorch#169782: scalars were passed so).
    torch 2.13 analyses every liger kernel training uses (bench/gpu/liger_compile_analysis.py). 2.12 is not
    measured: refused with 2.11."""
    from torch.torch_version import TorchVersion

    return TorchVersion(torch_version) < (2, 13)


def _from_gpt_neox(neox: dict[str, Any]) -> dict[str, Any]:
    """Our training fields from the GPT-NeoX keys of a model YAML."""
    out: dict[str, Any] = {}
    params = (neox.get("optimizer") or {}).get("params") or {}
    for key in ("lr", "betas", "eps"):  # checked with the train section's keys
        if key in params:
            out[key] = params[key]
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
        "model_parallel_size": "model_parallel_size",
        "pipe_parallel_size": "pipe_parallel_size",
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
    if not isinstance(model, str) and not (isinstance(model, list) and all(isinstance(m, str) for m in model)):
        raise ConfigError(f"train.model must be a model YAML path or a list of them, got {model!r}")
    models = tuple(
        str(base_dir / m) if not Path(m).is_absolute() else m for m in ([model] if isinstance(model, str) else model)
    )
    section["model"] = models
    values = _from_gpt_neox(load_neox_yaml(*models))
    values.update(section)
    if isinstance(values.get("env"), dict):  # YAML reads `FI_EFA_USE_DEVICE_RDMA: 1` as a number; env is text
        values["env"] = {k: as_text(v) for k, v in values["env"].items()}
    return parse(TrainConfig, values, "train")


def as_text(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The `train:` section of a pipeline config file (model YAML paths in it are relative to the file)."""
    raw = read_pipeline_config(path)
    if not isinstance(raw.get("train"), dict):
        raise ConfigError(f"{path} has no `train:` section")
    section = {**raw["train"], **(overrides or {})}
    return build_train_config(section, base_dir=Path(path).parent)
