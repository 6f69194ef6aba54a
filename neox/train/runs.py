"""Training runs as content-addressed outputs: where a config's run lives (its key under storage_path, checked
before anything starts), what a run folder's run.json says, and the runs a storage path holds (`neox runs`)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from neox.errors import ConfigError
from neox.model.config import ModelConfig, load_model_config
from neox.pipeline.layout import CONFIG_FILE, FINAL_MODEL, RUN_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from neox.pipeline.stage import sha256_file, verify_output
from neox.train.checkpointing import latest_state
from neox.train.config import TrainConfig, check_layout
from neox.train.identity import identity, key_of
from neox.train.storage import RunStorage, run_names, run_storage


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A config's run, resolved: the model with the dataset's vocabulary, the identity and key, its storage."""

    cfg: TrainConfig
    model: ModelConfig
    manifest: dict[str, Any]  # the tokenized dataset's
    identity: dict[str, Any]
    key: str
    storage: RunStorage

    def record(self) -> dict[str, Any]:
        """The run.json written when the run starts."""
        return {
            "key": self.key,
            "label": self.cfg.name,
            "identity": self.identity,
            "data": str(Path(self.cfg.datasets[0]).resolve()),
            **({"datasets": [str(Path(d).resolve()) for d in self.cfg.datasets]} if len(self.cfg.datasets) > 1 else {}),
            "created": time.time(),
        }


def plan_run(cfg: TrainConfig, continued_from: dict[str, Any] | None = None) -> RunPlan:
    """The run `cfg` trains, after checking its dataset, model and starting weights."""
    if cfg.data is None:
        raise ConfigError("train.data is not set: give a tokenize stage output (neox tokenize ...) or --data")
    manifests = [verify_output(data) for data in cfg.datasets]
    manifest = manifests[0]
    for data, other in zip(cfg.datasets[1:], manifests[1:], strict=True):
        if other["inputs"].get("tokenizer") != manifest["inputs"].get("tokenizer"):
            raise ConfigError(
                f"train.data: {data} was tokenized with another tokenizer than {cfg.datasets[0]}; blended datasets "
                "must share one (tokenize them with the same tokenizer.json)"
            )
    model, _ = load_model_config(*cfg.model, vocab_size=manifest["stats"]["vocab_size"])
    check_layout(cfg, model)
    if cfg.seq_length > model.max_position_embeddings:
        positions = model.max_position_embeddings
        raise ConfigError(f"train.seq_length {cfg.seq_length} exceeds the model's max_position_embeddings {positions}")
    for data in cfg.datasets:
        check_examples(cfg, Path(data))
    start = None
    if cfg.init_from:
        check_init_from(cfg.init_from, model, Path(cfg.datasets[0]))
        cfg = dataclasses.replace(cfg, init_from=str(Path(cfg.init_from).resolve()))
        start = sha256_file(Path(cfg.init_from) / WEIGHTS_FILE)
    # one dataset: its key (as before blending existed, so such runs keep their keys); several: keys and weights
    data_key = (
        manifest["key"] if len(manifests) == 1 else [[m["key"], w] for m, w in zip(manifests, cfg.weights, strict=True)]
    )
    payload = identity(cfg, model, data_key, start, continued_from)
    key = key_of(payload)
    return RunPlan(cfg, model, manifest, payload, key, run_storage(cfg.storage_path, key))


def check_examples(cfg: TrainConfig, data: Path) -> None:
    """Fine-tuning data (one example per sequence) checked before any worker starts: the split must leave examples
    to train and validate on; examples longer than a sequence are cut at the end, said here with how many."""
    from neox.data.dataset import split_boundaries
    from neox.data.indexed import IndexedDataset
    from neox.data.tokenize import label_prefix

    if label_prefix(data) is None:
        return
    sizes = IndexedDataset(label_prefix(data)).sizes
    bounds = split_boundaries(cfg.split, len(sizes))
    for index, part in enumerate(("train", "valid")):
        if bounds[index + 1] <= bounds[index]:
            raise ConfigError(
                f"train.split {cfg.split} leaves no {part} examples of the {len(sizes)} in {data}: give the {part} "
                "part a larger weight, or more examples"
            )
    cut = int((sizes > cfg.seq_length + 1).sum())
    if cut:
        print(
            f"train: {cut} of {len(sizes)} examples ({cut / len(sizes):.1%}) are longer than seq_length + 1 = "
            f"{cfg.seq_length + 1} tokens and are cut at the end (the longest has {int(sizes.max())}); an example cut "
            "within its prompt has nothing scored. Raise train.seq_length to keep them whole.",
            file=sys.stderr,
            flush=True,
        )


def check_init_from(checkpoint: str, model_cfg: ModelConfig, data: Path) -> None:
    """Weights to start from must fit the configured model and speak the dataset's tokenizer."""
    from neox.model.checkpoint import load_model_config_from

    if not (Path(checkpoint) / WEIGHTS_FILE).is_file():
        raise ConfigError(f"train.init_from {checkpoint} is not a neox checkpoint ({WEIGHTS_FILE} is missing)")
    start = load_model_config_from(checkpoint)
    if start != model_cfg:
        changed = sorted(
            f.name for f in dataclasses.fields(start) if getattr(start, f.name) != getattr(model_cfg, f.name)
        )
        raise ConfigError(
            f"train.init_from {checkpoint} holds another model shape ({', '.join(changed)} differ from train.model)"
        )
    ours, theirs = Path(checkpoint) / TOKENIZER_FILE, data / TOKENIZER_FILE
    if ours.exists() and sha256_file(ours) != sha256_file(theirs):
        raise ConfigError(
            f"train.init_from {checkpoint} was trained with another tokenizer than {data} was tokenized "
            "with: tokenize the new data with the model's tokenizer (data.tokenizer.from)"
        )


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One folder of a storage path, as `neox runs` lists it."""

    key: str
    label: str
    status: str  # finished, stopped (has checkpoints), new (started, no checkpoint yet), legacy (before keys)
    step: int
    train_iters: int | None
    data_key: str | None
    location: str
    record: dict[str, Any] | None  # its run.json
    storage: RunStorage = dataclasses.field(repr=False, compare=False)

    @property
    def final_model(self) -> str | None:
        return "/".join((self.location, *FINAL_MODEL)) if self.status == "finished" else None


def read_record(storage: RunStorage) -> tuple[dict[str, Any] | None, bool]:
    """(the run's run.json, whether one is there that cannot be used): listing, continuing and reusing a run all
    read its identity, so a record without one is as unreadable as one that is not UTF-8 JSON."""
    try:
        text = storage.read_text(RUN_FILE)
        if not text:  # none: a run from before runs were keyed
            return None, False
        record = json.loads(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return None, True
    usable = isinstance(record, dict) and isinstance(record.get("identity"), dict)
    return (record, False) if usable else (None, True)


def run_info(storage: RunStorage) -> RunInfo:
    record, unreadable = read_record(storage)
    state = latest_state(storage) or {}
    finished = storage.read_text(*FINAL_MODEL, CONFIG_FILE) is not None
    if unreadable:
        status = f"unreadable {RUN_FILE}"  # hand-edited or damaged: listed with the others, never reused
    elif record is None:
        status = "legacy"  # a run from before content-addressed runs: listed, never reused
    else:
        status = "finished" if finished else "stopped" if state else "new"
    train = (record or {}).get("identity", {}).get("train", {})
    return RunInfo(
        key=storage.name if record else "-",
        label=(record or {}).get("label", storage.name),
        status=status,
        step=int(state.get("step", 0)),
        train_iters=train.get("train_iters"),
        data_key=shown_data_key((record or {}).get("identity", {}).get("data")),
        location=storage.uri,
        record=record,
        storage=storage,
    )


def shown_data_key(data: str | list | None) -> str | None:
    """A run's dataset key as `neox runs` shows it; blended datasets as KEY*WEIGHT+..."""
    return "+".join(f"{key}*{weight:.3g}" for key, weight in data) if isinstance(data, list) else data


def list_runs(storage_path: str) -> list[RunInfo]:
    """Every run under a storage path, newest first (legacy runs last)."""
    runs = [run_info(run_storage(storage_path, name)) for name in run_names(storage_path)]
    return sorted(runs, key=lambda r: -(r.record or {}).get("created", 0))


def runs_table(runs: list[RunInfo]) -> str:
    rows = [("KEY", "LABEL", "STATUS", "STEP", "DATA", "FINAL CHECKPOINT")]
    for run in runs:
        steps = f"{run.step}/{run.train_iters}" if run.train_iters else str(run.step)
        rows.append((run.key, run.label, run.status, steps, run.data_key or "-", run.final_model or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows)
