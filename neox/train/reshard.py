"""Whole weights from a training checkpoint of any layout: the DeepSpeed files of every tensor-parallel rank and
pipeline stage, memory-mapped and read as weights only (no code from the run folder), joined tensor by tensor into
a neox model checkpoint, so a run stopped in one layout can be evaluated, exported to Hugging Face, registered, or
continued in another (`train.init_from`). Only the tensor being joined is in memory.

File names are DeepSpeed's: `mp_rank_TT_model_states.pt` hold each tensor-parallel rank's module without pipeline
stages; with stages, `layer_II-model_TT-model_states.pt` hold piece II (`pipeline.py`: 0 the embedding, 1..L the
layers, L + 1 the final norm and output layer) of tensor-parallel rank TT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from neox.errors import DataError, MissingInput
from neox.model.checkpoint import dense_specs, save_model_streaming
from neox.model.config import ModelConfig
from neox.pipeline.layout import CHECKPOINT_PREFIX, DATA_FILE, DEEPSPEED_TAG, STATE_FILE, TOKENIZER_FILE
from neox.train.pipeline import piece_of
from neox.train.tensor_parallel import split_dim

PIECE_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt")
RANK_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt")


def read_states(path: Path) -> dict:
    """A DeepSpeed state file, memory-mapped, tensors and plain containers only (refusing pickled code)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError for what it refuses
        raise DataError(f"{path} is not a readable DeepSpeed checkpoint file: {err}") from None


def checkpoint_tensors(folder: str | Path, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) of every weight of the checkpoint in `folder` (a Ray Train checkpoint of a run), in the
    model's order."""
    tag = Path(folder) / DEEPSPEED_TAG
    pieces = {tuple(map(int, m.groups())) for p in tag.glob("layer_*") if (m := PIECE_FILE.fullmatch(p.name))}
    ranks = sorted(int(m.group(1)) for p in tag.glob("mp_rank_*") if (m := RANK_FILE.fullmatch(p.name)))
    if not ranks:
        raise MissingInput(f"{folder} holds no DeepSpeed checkpoint ({DEEPSPEED_TAG}/mp_rank_*_model_states.pt)")
    if pieces:
        tensor = 1 + max(rank for _, rank in pieces)
        loaded: dict[int, list[dict]] = {}
        for name, shape in dense_specs(cfg):
            index, local = piece_of(name, cfg.num_layers)
            if index not in loaded:
                loaded = {
                    index: [
                        read_states(tag / f"layer_{index:02d}-model_{t:02d}-model_states.pt") for t in range(tensor)
                    ]
                }
            yield name, joined(name, shape, [part(states, local, name, tag) for states in loaded[index]])
        return
    modules = [
        part(read_states(tag / f"mp_rank_{rank:02d}_model_states.pt"), "module", "module", tag) for rank in ranks
    ]
    if any(".lora_A." in key for key in modules[0]):
        raise DataError(
            f"{tag} is a checkpoint of a LoRA run, its adapters kept apart from the weights: resume the run to its "
            "end (neox train CONFIG --resume), whose final export has them merged in"
        )
    for name, shape in dense_specs(cfg):
        yield name, joined(name, shape, [part(module, name, name, tag) for module in modules])


def part(states: dict, key: str, name: str, tag: Path):
    """states[key], or an error saying the checkpoint lacks `name` (another model, or not a training checkpoint)."""
    try:
        return states[key]
    except (KeyError, TypeError):
        raise DataError(f"{tag}: the checkpoint has no {name}; it is not a checkpoint of this model") from None


def joined(name: str, shape: tuple[int, ...], parts: list[torch.Tensor]) -> torch.Tensor:
    """The whole tensor from each tensor-parallel rank's part (or its one copy when every rank holds it whole)."""
    dim = split_dim(name) if len(parts) > 1 else None
    whole = parts[0] if dim is None else torch.cat(parts, dim=dim)
    if tuple(whole.shape) != shape:
        empty = (
            " (a ZeRO-3 checkpoint keeps its weights partitioned with the optimizer state)" if not whole.numel() else ""
        )
        raise DataError(f"{name}: the checkpoint holds {tuple(whole.shape)}, the model {shape}{empty}")
    return whole


def newest_checkpoint(run_or_checkpoint: Path) -> Path:
    """The checkpoint folder itself, or a run folder's newest checkpoint that was written whole."""
    if (run_or_checkpoint / DEEPSPEED_TAG).is_dir():
        return run_or_checkpoint
    done = sorted(
        p
        for p in run_or_checkpoint.glob(f"{CHECKPOINT_PREFIX}*")
        if (p / STATE_FILE).is_file() and (p / DEEPSPEED_TAG).is_dir()
    )
    if not done:
        raise MissingInput(f"{run_or_checkpoint} is neither a training checkpoint nor a run folder holding one")
    return done[-1]


def reshard(run_or_checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the whole model of a run's newest checkpoint (or of the checkpoint given) as a neox checkpoint, with
    the run's tokenizer when its dataset is still there. Returns the checkpoint folder read."""
    checkpoint = newest_checkpoint(Path(run_or_checkpoint))
    state = json.loads((checkpoint / STATE_FILE).read_text())
    cfg = ModelConfig(**state["model_config"])
    data = checkpoint.parent / DATA_FILE
    tokenizer = Path(json.loads(data.read_text())["data"]) / TOKENIZER_FILE if data.is_file() else None
    tokenizer = tokenizer if tokenizer is not None and tokenizer.is_file() else None
    save_model_streaming(
        cfg, checkpoint_tensors(checkpoint, cfg), out_dir, tokenizer_file=tokenizer, overwrite=overwrite
    )
    return checkpoint
