"""The `finetune:` section and the model a fine-tune starts from.

    finetune:
      base: models:/neox-tiny@champion     # or models:/NAME/VERSION, a neox checkpoint, a Hugging Face folder
      instructions: {sources: [chats.jsonl]}   # supervised fine-tuning; without it, the data section's shards

The fine-tuned model is registered under the config's `registry.name`, its own registered model, with lineage
tags naming the base; the promotion gate compares it with its registered model's champion or, before there is
one, with the base model scored on the same held-out data.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from neox.data.instructions import InstructionsConfig
from neox.data.prepare import DataConfig, TokenizerConfig
from neox.errors import ConfigError, MissingInput
from neox.pipeline.configfile import Str, parse, section
from neox.pipeline.layout import CONFIG_FILE, HF_CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
BASE_MODEL_TAG = "neox.base_model"  # on a fine-tuned version: models:/NAME/VERSION, or the base's folder
BASE_CHECKPOINT_TAG = "neox.base_checkpoint"


@section
class FinetuneConfig:
    """`finetune:`: what `neox finetune` and the finetune flow start from and train on (the train section says
    how: steps, learning rate, LoRA)."""

    base: Str
    """The model to fine-tune: a registered version (models:/NAME@champion, models:/NAME/3), a neox checkpoint
    folder, or a Hugging Face GPT-NeoX folder (imported into the work root first)."""
    instructions: InstructionsConfig | None = None
    """Instruction data for supervised fine-tuning; without it, the data section's shards (continued
    pretraining), tokenized with the base model's tokenizer whatever data.tokenizer says."""

    def __post_init__(self) -> None:
        if self.base.startswith("models:") and not MODEL_URI.match(self.base):
            raise ValueError(f"base {self.base!r}: give models:/NAME@ALIAS or models:/NAME/VERSION")


@dataclasses.dataclass(frozen=True)
class Base:
    """The resolved base: its checkpoint folder and what the lineage tags name it by."""

    checkpoint: Path
    uri: str
    registered_name: str | None = None


def registered_name(base: str) -> str | None:
    match = MODEL_URI.match(base)
    return match["name"] if match else None


def resolve_base(base: str, work_root: str | Path, tracking_uri: str) -> Base:
    """The base model as a neox checkpoint folder: a registered version's checkpoint (the folder it was evaluated
    from), a checkpoint as given, or a Hugging Face folder imported once into <work_root>/import/<its hash>."""
    match = MODEL_URI.match(base)
    resolved = registered_base(match, tracking_uri) if match else folder_base(Path(base), Path(work_root))
    if not (resolved.checkpoint / TOKENIZER_FILE).is_file():
        raise MissingInput(f"finetune.base {base}: its checkpoint {resolved.checkpoint} has no {TOKENIZER_FILE}")
    return resolved


def folder_base(folder: Path, work_root: Path) -> Base:
    if (folder / CONFIG_FILE).exists():
        checkpoint = folder
    elif (folder / HF_CONFIG_FILE).exists():
        checkpoint = imported(folder, work_root)
    elif not folder.is_dir():
        raise MissingInput(f"finetune.base {folder} does not exist")
    else:
        raise MissingInput(f"finetune.base {folder}: not a neox checkpoint ({CONFIG_FILE}) nor a Hugging Face folder")
    if not (checkpoint / WEIGHTS_FILE).exists():
        raise MissingInput(f"finetune.base {checkpoint} has no {WEIGHTS_FILE}")
    return Base(checkpoint.resolve(), str(folder.resolve()))


def registered_base(match: re.Match, tracking_uri: str) -> Base:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from neox.eval.run import CHECKPOINT_PATH_TAG

    client = MlflowClient(tracking_uri=tracking_uri)
    name = match["name"]
    try:
        version = (
            client.get_model_version_by_alias(name, match["alias"])
            if match["alias"]
            else client.get_model_version(name, match["version"])
        )
    except MlflowException as err:
        raise MissingInput(f"finetune.base {match.string}: no such model version in {tracking_uri} ({err})") from None
    checkpoint = Path(version.tags.get(CHECKPOINT_PATH_TAG, ""))
    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise MissingInput(
            f"finetune.base {match.string} is version {version.version}, whose checkpoint {checkpoint} is gone; "
            f"download its `model` artifact (mlflow artifacts download) and give that folder as the base"
        )
    return Base(checkpoint, f"models:/{name}/{version.version}", name)


def imported(hf_dir: Path, work_root: Path) -> Path:
    """A Hugging Face folder as a neox checkpoint, imported once (keyed by the folder's content)."""
    from neox.model.hf import import_hf
    from neox.pipeline.stage import input_fingerprint

    out = work_root / "import" / input_fingerprint(hf_dir)[:16]
    if not (out / WEIGHTS_FILE).exists():
        import_hf(hf_dir, out, overwrite=True)
    return out


def with_base_tokenizer(data: DataConfig, base: Base) -> DataConfig:
    """The data section tokenizing with the base's tokenizer (continued pretraining reads ids as the base learnt
    them), whatever its own `tokenizer:` says."""
    return dataclasses.replace(data, tokenizer=parse(TokenizerConfig, {"from": str(base.checkpoint / TOKENIZER_FILE)}))


def check_finetune(finetune: FinetuneConfig, registry_name: str) -> None:
    """The base and the instruction files are there (paths are relative to where you run, as the flow reads
    them), and the fine-tune registers as its own model: not as new versions of the model it starts from."""
    registered = registered_name(finetune.base)
    if registered is None and not (finetune.base.strip() and Path(finetune.base).is_dir()):
        raise ConfigError(
            f"finetune.base {finetune.base!r} is no folder here (a path is relative to where you run), nor a "
            "models:/NAME@ALIAS or models:/NAME/VERSION URI"
        )
    instructions = finetune.instructions
    if instructions is not None:
        missing = [source for source in instructions.sources if not Path(source).exists()]
        if instructions.chat_template and not Path(instructions.chat_template).is_file():
            missing.append(instructions.chat_template)
        if missing:
            raise ConfigError(
                f"finetune.instructions: {', '.join(missing)} not found (paths are relative to where you run)"
            )
    if registered == registry_name:
        raise ConfigError(
            f"registry.name {registry_name} is the base model's: register the fine-tune under its own name "
            f"(e.g. {registry_name}-sft), with lineage to the base version"
        )
