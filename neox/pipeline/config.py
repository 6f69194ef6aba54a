"""The pipeline config, typed and checked whole at the edge (a CLI command or a flow's start): a typo in the
registry rule should not surface after hours of data preparation and training.

    work_root: work        # where stage outputs live
    data: {...}            # neox.data.prepare.DataConfig
    train: {...}           # neox.train.config.TrainConfig, over the model YAML's GPT-NeoX keys
    eval: {...}            # neox.eval.config.EvalSection
    registry: {...}        # neox.registry.rule.RegistryConfig
    retrain: {...}         # neox.pipeline.retrain.RetrainConfig (optional)
    finetune: {...}        # neox.pipeline.finetune.FinetuneConfig (optional): what `neox finetune` starts from
    timeouts: {...}        # TimeoutsConfig: hours each Prefect task may run

Every key at every depth is known, every value typed and in range; errors name the dotted path. Besides each
section's own checks: train.seq_length fits the model's positions, every metric of the promotion rule is one the
configured eval tasks report, and the retrain section's keys are valid merged into the sections they replace.
Nothing here imports torch, DeepSpeed or MLflow.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from neox.data.dataset import split_weights
from neox.data.prepare import DataConfig, data_config
from neox.data.splits import SPLITS
from neox.errors import ConfigError
from neox.eval.config import OFFLINE_TASKS, RESPONSE_TASK, EvalSection
from neox.model.config import load_model_config
from neox.pipeline.configfile import PositiveFloat, Str, parse, read_pipeline_config, section
from neox.pipeline.finetune import FinetuneConfig, check_finetune
from neox.pipeline.retrain import RetrainConfig, merged_data
from neox.registry.rule import RegistryConfig
from neox.train.config import TrainConfig, build_train_config, check_layout

TASKS_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval"
PLACEHOLDER_VOCAB = 50277  # the architecture is checked before a tokenizer exists; its size only pads the embedding


@section
class TimeoutsConfig:
    """`timeouts:`: hours each Prefect task may run before it fails (a hung download or a stalled worker fails
    the flow run, and its failure notification fires, instead of holding the run open). Reruns resume: the data
    stages reuse what they published and training continues from its latest checkpoint."""

    download_hours: PositiveFloat = 24.0
    """The download task."""
    dedup_hours: PositiveFloat = 24.0
    """The dedup task."""
    tokenizer_hours: PositiveFloat = 12.0
    """The tokenizer task (training or loading one)."""
    tokenize_hours: PositiveFloat = 24.0
    """The tokenize task, and the fine-tuning flow's instructions task (which tokenizes)."""
    train_hours: PositiveFloat = 168.0
    """The train task; raise it for pretraining runs longer than a week."""
    evaluate_hours: PositiveFloat = 12.0
    """Each lm-eval task: the new checkpoint's and the champion's."""


@section
class PipelineConfig:
    """A pipeline config file: the stages' sections, each checked whole."""

    train: TrainConfig
    data: DataConfig | None = None
    """Required, except in a fine-tuning config with finetune.instructions."""
    work_root: Str = "work"
    """Where stage outputs live: <work_root>/<stage>/<key>/."""
    eval: EvalSection = EvalSection()
    registry: RegistryConfig = RegistryConfig()
    retrain: RetrainConfig | None = None
    finetune: FinetuneConfig | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """The config file at `path`, every section typed and checked (model YAML paths relative to the file)."""
    try:
        return _load(Path(path))
    except ConfigError as err:  # named once: the file readers' own errors start with it
        raise ConfigError(str(err) if str(err).startswith(f"{Path(path)} ") else f"{path}: {err}") from None


def _load(path: Path) -> PipelineConfig:
    raw = read_pipeline_config(path)
    if not isinstance(raw.get("train"), dict):
        raise ConfigError("no `train:` section (a mapping with at least `model:`)")
    train = build_train_config(raw["train"], base_dir=path.parent)
    cfg = parse(PipelineConfig, {**raw, "train": train})
    model, _ = load_model_config(*train.model, vocab_size=PLACEHOLDER_VOCAB)
    check_layout(train, model)
    if train.seq_length > model.max_position_embeddings:
        positions = model.max_position_embeddings
        raise ConfigError(
            f"train.seq_length {train.seq_length} exceeds the model's max_position_embeddings {positions}"
        )
    if cfg.data is None and (cfg.finetune is None or cfg.finetune.instructions is None or cfg.retrain is not None):
        raise ConfigError("no `data:` section (only a fine-tuning config with finetune.instructions may leave it out)")
    check_rule_metrics(cfg)
    check_held_out(cfg.data, cfg.train.split, cfg.eval.data.part, cfg.finetune)
    if RESPONSE_TASK in cfg.eval.tasks and (cfg.finetune is None or cfg.finetune.instructions is None):
        raise ConfigError(
            f"eval.tasks: {RESPONSE_TASK} scores responses of instruction data, which only a fine-tuning config with "
            "finetune.instructions has"
        )
    if cfg.finetune is not None:
        check_finetune(cfg.finetune, cfg.registry.name)
    if cfg.retrain is not None:
        data = data_config(merged_data(raw["data"], cfg.retrain))
        retrain = build_train_config({**raw["train"], **cfg.retrain.train}, base_dir=path.parent)
        check_held_out(data, retrain.split, cfg.eval.data.part, None, "retrain")
    return cfg


def check_held_out(
    data: DataConfig | None, split: str, part: str, finetune: FinetuneConfig | None, where: str = ""
) -> None:
    """Evaluation reads the eval.data.part (test) documents training leaves out: a config that leaves none would
    fail only after training. Named splits (valid/test sources, a Pile mirror) replace the positional split."""
    at = f"{where}: " if where else ""
    named = data is not None and (finetune is None or finetune.instructions is None)
    if named and (data.valid_sources or data.test_sources or data.pile_mirror):
        if not (data.pile_mirror or getattr(data, f"{part}_sources")):
            raise ConfigError(
                f"{at}eval.data.part is {part}, but the data has named splits and no {part} one: give "
                f"data.{part}_sources (or set eval.data.part to the part that exists)"
            )
    elif split_weights(split)[SPLITS.index(part)] == 0:
        raise ConfigError(
            f"{at}train.split {split!r} leaves no {part} documents, which evaluation (eval.data.part) reads after "
            f"training: give the {part} part a weight, e.g. '969,30,1'"
        )


def check_rule_metrics(cfg: PipelineConfig) -> None:
    """A promotion metric no eval task reports would never promote (and exit 0): each must name a configured task,
    and for our offline tasks one of the metrics it reports."""
    rule, tasks = cfg.registry.rule, set(cfg.eval.tasks)
    for metric in rule.metrics():
        task, _, name = metric.partition("/")
        if task not in tasks:
            raise ConfigError(f"registry.rule: {metric} is not reported: {task} is not in eval.tasks {sorted(tasks)}")
        if task in OFFLINE_TASKS and name not in offline_metrics(task):
            known = ", ".join(offline_metrics(task))
            raise ConfigError(f"registry.rule: {metric} is not reported: {task} reports {known}")


def offline_metrics(task: str) -> list[str]:
    return [m["metric"] for m in yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())["metric_list"]]
