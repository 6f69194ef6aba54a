"""Retraining, by the pipeline config's `retrain:` section: continue the registered model's current champion on
the shards that arrived since it was trained, or train a new model from scratch on all of them.

    retrain:
      mode: continue            # or scratch
      data: {sources: [incoming/]}          # keys replacing the data section's (a folder: every shard in it)
      train: {train_iters: 100, lr: 3.0e-4, warmup: 0.0}   # keys replacing the train section's

`continue` starts from the champion's weights (fresh optimizer and schedule), tokenizes the new shards with the
champion's tokenizer, and labels the run after the champion version and the new data; a rerun of the same
retrain resumes or reuses it because its key (the champion's weights, the new data, the settings) is the same.
Shards are new when their URL is not in the champion's download manifest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from neox.data.download import EmptyFolder
from neox.data.prepare import data_config, data_sources, upstream_outputs
from neox.errors import RunStateError
from neox.eval.run import CHECKPOINT_PATH_TAG
from neox.pipeline.configfile import Str, parse, section
from neox.pipeline.layout import DATA_FILE, TOKENIZER_FILE, WEIGHTS_FILE, run_of
from neox.pipeline.stage import read_manifest


@section
class RetrainConfig:
    """`retrain:`: what the retrain flow (the scheduled-retrain deployment) does."""

    mode: Literal["continue", "scratch"] = "continue"
    """continue: the champion's weights on the shards that arrived since it was trained; scratch: a new model."""
    data: dict[Str, Any] = dataclasses.field(default_factory=dict)
    """Keys replacing the data section's (checked merged with it); input keys replace all of its inputs."""
    train: dict[Str, Any] = dataclasses.field(default_factory=dict)
    """Keys replacing the train section's (checked merged with it)."""

    def __post_init__(self) -> None:
        if {"init_from", "name", "split"} & set(self.train):
            raise ValueError(
                "retrain.train sets neither init_from nor name (the retrain flow derives them) nor split "
                "(evaluation holds out the split of the train section)"
            )


def retrain_config(section: dict[str, Any] | None) -> RetrainConfig:
    return parse(RetrainConfig, section, "retrain")


@dataclasses.dataclass(frozen=True)
class Champion:
    version: str
    checkpoint: Path  # its final/model
    sources: tuple[str, ...]  # the URLs of the shards it was trained on


def champion_lineage(version, work_root: str | Path) -> Champion:
    """What a registered champion version was trained from, read through its lineage tags and stage manifests."""
    checkpoint = Path(version.tags.get(CHECKPOINT_PATH_TAG, ""))
    run = run_of(checkpoint)
    run_data = None if run is None else run / DATA_FILE
    if not (checkpoint / WEIGHTS_FILE).is_file() or run_data is None or not run_data.is_file():
        raise RunStateError(
            f"champion version {version.version}: its checkpoint {checkpoint} or training run is gone, "
            "so there is nothing to continue from (use retrain.mode: scratch)"
        )
    download = upstream_outputs(json.loads(run_data.read_text())["data"], work_root).get("download")
    if download is None:
        raise RunStateError(
            f"champion version {version.version}: its download stage output is not under {work_root}, "
            "so the shards it saw are unknown (use retrain.mode: scratch)"
        )
    return Champion(str(version.version), checkpoint, tuple(read_manifest(download)["stats"]["sources"].values()))


INPUT_KEYS = ("corpus", "sample_shards", "sources", "pile_mirror")


def merged_data(data: dict[str, Any], cfg: RetrainConfig) -> dict[str, Any]:
    """The data section with retrain.data's keys in place; its input keys (corpus, sources, pile_mirror)
    replace all of the data section's."""
    base = {k: v for k, v in data.items() if k not in INPUT_KEYS} if set(INPUT_KEYS) & set(cfg.data) else data
    return {**base, **cfg.data}


def retrain_data(
    data: dict[str, Any], cfg: RetrainConfig, work_root: str | Path, champion: Champion | None
) -> dict[str, Any] | None:
    """The data section the retrain runs on; None when continuing and no shard arrived since the champion."""
    section = merged_data(data, cfg)
    if cfg.mode == "scratch":
        return section
    if champion is None:
        raise RunStateError(
            "retrain.mode continue needs a champion to continue from: run the pretrain flow first "
            "(or use retrain.mode: scratch)"
        )
    seen = set(champion.sources)
    try:
        new = [s.url for s in data_sources(data_config(section), Path(work_root)) if s.url not in seen]
    except EmptyFolder:  # a watched folder nothing has arrived in yet
        return None
    if not new:
        return None
    rest = {k: v for k, v in section.items() if k not in INPUT_KEYS}
    return {**rest, "sources": new, "tokenizer": {"from": str(champion.checkpoint / TOKENIZER_FILE)}}


def retrain_overrides(
    base_name: str, cfg: RetrainConfig, tokenized: str | Path, champion: Champion | None
) -> dict[str, Any]:
    """The train section's replacements: the retrain's own keys, a run name per (champion, data) and, when
    continuing, the champion's weights to start from."""
    data_key = Path(tokenized).name[:8]
    if cfg.mode == "scratch":
        return {**cfg.train, "name": f"{base_name}-scratch-{data_key}"}
    assert champion is not None
    return {**cfg.train, "name": f"{base_name}-v{champion.version}-{data_key}", "init_from": str(champion.checkpoint)}
