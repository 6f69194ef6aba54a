"""EleutherAI gpt-neox's own checkpoints (a `global_stepN` folder), read into and written from ours.
docs/neox-checkpoints.md describes the layout; in short, as gpt-neox's `tools/ckpts/convert_neox_to_hf.py` reads it:

- per layer (`pipe_parallel_size` >= 1, gpt-neox's usual setting): `layer_II-model_TT-model_states.pt` per layer
  index II and tensor-parallel rank TT, each that layer's state dict. II is 0 for the embedding
  (`word_embeddings.weight`), 2 .. L+1 for the L transformer layers, L+3 for the final norm (`norm.*`) and L+4 for
  the output layer (`final_linear.weight`); 1 and L+2 hold no weights and have no file.
- whole model (`pipe_parallel_size: 0`): `mp_rank_TT_model_states.pt`, DeepSpeed's checkpoint dict, its `module`
  holding `sequential.II.<name>` for the same indices.

Tensor-parallel ranks hold slices: column-parallel weights and biases (query_key_value, dense_h_to_4h) and the
vocabulary-parallel embedding and output layer are cut along dim 0, row-parallel weights (attention.dense,
dense_4h_to_h) along dim 1; the row-parallel biases are summed over ranks and the norms averaged.

The files are pickles: they are loaded with `weights_only=True`, allowing only the numpy globals of the RNG state
gpt-neox stores in them; anything else in a file is refused, never run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from neox.errors import ConfigError, DataError, MissingInput
from neox.model.checkpoint import load_model_config_from, open_weights, save_model_streaming
from neox.model.config import ModelConfig, load_model_config
from neox.pipeline.atomic import atomic_directory
from neox.pipeline.layout import CONFIG_FILE, TOKENIZER_FILE

COLUMN = ("attention.query_key_value.weight", "attention.query_key_value.bias", "mlp.dense_h_to_4h.weight")
COLUMN += ("mlp.dense_h_to_4h.bias",)
ROW = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
ROW_BIAS = ("attention.dense.bias", "mlp.dense_4h_to_h.bias")
NORMS = ("input_layernorm.weight", "input_layernorm.bias", "post_attention_layernorm.weight")
NORMS += ("post_attention_layernorm.bias",)
BUFFERS = ("attention.rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")  # recomputed, not read
LAYER_FILE = "layer_{index:02d}-model_{rank:02d}-model_states.pt"
WHOLE_FILE = "mp_rank_{rank:02d}_model_states.pt"
# what gpt-neox's checkpoints carry besides tensors and plain containers: numpy's RNG state (`numpy.core` in files
# written under numpy 1)
NUMPY_RNG_GLOBALS = [
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    np._core.multiarray._reconstruct,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
]


def load_pickled(path: Path) -> dict[str, Any]:
    """A gpt-neox checkpoint file, unpickled with weights_only (tensors, containers, numpy RNG state only)."""
    try:
        with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingInput(f"{path} is missing") from None
    except Exception as err:  # pickle refusals and damaged files raise several types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path} is not a gpt-neox checkpoint file neox reads safely ({first})") from None


def layout_of(directory: Path) -> tuple[str, int]:
    """("layers" or "whole", tensor-parallel partitions) from the file names in a checkpoint folder."""
    if not directory.is_dir():
        raise MissingInput(f"{directory} is not a folder")
    ranks = sorted(
        int(m[1]) for p in directory.iterdir() if (m := re.fullmatch(r"layer_00-model_(\d+)-model_states\.pt", p.name))
    )
    if ranks:
        return "layers", _checked_ranks(directory, ranks)
    ranks = sorted(
        int(m[1]) for p in directory.iterdir() if (m := re.fullmatch(r"mp_rank_(\d+)_model_states\.pt", p.name))
    )
    if ranks:
        return "whole", _checked_ranks(directory, ranks)
    raise DataError(
        f"{directory} holds no gpt-neox checkpoint: no layer_00-model_00-model_states.pt (pipe_parallel_size >= 1) "
        "or mp_rank_00_model_states.pt (pipe_parallel_size 0); give the global_stepN folder"
    )


def _checked_ranks(directory: Path, ranks: list[int]) -> int:
    if ranks != list(range(len(ranks))):
        raise DataError(f"{directory}: tensor-parallel partitions {ranks} are not 0..{len(ranks) - 1}")
    return len(ranks)


def merged(key: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """One tensor from its tensor-parallel partitions, as gpt-neox's conversion merges them."""
    if key in COLUMN or key in ("word_embeddings.weight", "final_linear.weight"):
        return torch.cat(parts, dim=0)
    if key in ROW:
        return torch.cat(parts, dim=1)
    if key in ROW_BIAS:
        return sum(parts[1:], parts[0].clone())
    if key in NORMS or key in ("norm.weight", "norm.bias"):
        return sum(parts[1:], parts[0].clone()) / len(parts)
    raise DataError(f"unexpected tensor {key!r} in a gpt-neox checkpoint")


def split(key: str, tensor: torch.Tensor, partitions: int) -> list[torch.Tensor]:
    """The inverse of `merged`: each rank's slice (row-parallel biases divided, norms copied)."""
    if key in COLUMN or key in ("word_embeddings.weight", "final_linear.weight"):
        return [t.clone() for t in tensor.chunk(partitions, dim=0)]
    if key in ROW:
        return [t.clone() for t in tensor.chunk(partitions, dim=1)]
    if key in ROW_BIAS:
        return [tensor / partitions for _ in range(partitions)]
    return [tensor.clone() for _ in range(partitions)]


class Reader:
    """Layer states of a checkpoint folder, by gpt-neox's layer index, merged over its partitions."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.layout, self.partitions = layout_of(directory)
        self.whole = (
            [load_pickled(directory / WHOLE_FILE.format(rank=r)).get("module") for r in range(self.partitions)]
            if self.layout == "whole"
            else None
        )

    def layer(self, index: int) -> dict[str, torch.Tensor]:
        if self.whole is not None:
            prefix = f"sequential.{index}."
            states = [
                {k[len(prefix) :]: v for k, v in (module or {}).items() if k.startswith(prefix)}
                for module in self.whole
            ]
        else:
            states = [
                load_pickled(self.directory / LAYER_FILE.format(index=index, rank=r)) for r in range(self.partitions)
            ]
        keys = [k for k in states[0] if k not in BUFFERS and not k.endswith(BUFFERS)]
        if not keys:
            raise DataError(f"{self.directory}: layer {index} holds no weights")
        if any(set(state) != set(states[0]) for state in states):
            raise DataError(f"{self.directory}: the partitions of layer {index} hold different tensors")
        return {key: merged(key, [state[key] for state in states]) for key in keys}


def imported_tensors(
    reader: Reader, cfg: ModelConfig, embedding: dict[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Our (name, tensor) pairs in our model's order, a layer read at a time (`embedding`: layer 0, read already)."""
    yield "embed_in.weight", _only(embedding, "word_embeddings.weight", 0)
    for layer in range(cfg.num_layers):
        state = reader.layer(layer + 2)
        for key in NORMS + COLUMN[:2] + (ROW[0], ROW_BIAS[0]) + COLUMN[2:] + (ROW[1], ROW_BIAS[1]):
            yield f"layers.{layer}.{key}", _pop(state, key, layer + 2)
        if state:
            raise DataError(f"layer {layer + 2} holds tensors this model does not have: {sorted(state)}")
    norm = reader.layer(cfg.num_layers + 3)
    yield "final_layer_norm.weight", _pop(norm, "norm.weight", cfg.num_layers + 3)
    yield "final_layer_norm.bias", _pop(norm, "norm.bias", cfg.num_layers + 3)
    if cfg.no_weight_tying:
        yield "embed_out.weight", _only(reader.layer(cfg.num_layers + 4), "final_linear.weight", cfg.num_layers + 4)


def _pop(state: dict[str, torch.Tensor], key: str, index: int) -> torch.Tensor:
    if key not in state:
        raise DataError(f"layer {index} of the gpt-neox checkpoint has no {key}")
    return state.pop(key)


def _only(state: dict[str, torch.Tensor], key: str, index: int) -> torch.Tensor:
    tensor = _pop(state, key, index)
    if state:
        raise DataError(f"layer {index} holds tensors this model does not have: {sorted(state)}")
    return tensor


def import_neox(
    directory: str | Path,
    model_yaml: str | Path | list[str | Path],
    out_dir: str | Path,
    tokenizer_file: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """A gpt-neox checkpoint folder (either layout, any tensor-parallel size) and its model YAML(s) as our
    checkpoint, tensor for tensor in fp32."""
    reader = Reader(Path(directory))
    embedding = reader.layer(0)
    rows = _pop(dict(embedding), "word_embeddings.weight", 0).shape[0]
    yamls = model_yaml if isinstance(model_yaml, list) else [model_yaml]
    cfg, _ = load_model_config(*yamls, vocab_size=rows)
    if cfg.vocab_size != rows:
        raise DataError(
            f"the checkpoint's embedding has {rows} rows; the model YAML pads the vocabulary to {cfg.vocab_size}"
        )
    return save_model_streaming(
        cfg, imported_tensors(reader, cfg, embedding), out_dir, tokenizer_file, overwrite=overwrite
    )


def export_neox(checkpoint: str | Path, out_dir: str | Path, partitions: int = 1, overwrite: bool = False) -> Path:
    """Our checkpoint as a gpt-neox per-layer checkpoint folder cut for `partitions` tensor-parallel ranks, with a
    `config.yml` for gpt-neox's `convert_neox_to_hf.py --config_file` (and the tokenizer, when there is one)."""
    checkpoint = Path(checkpoint)
    cfg = load_model_config_from(checkpoint)
    if not cfg.no_weight_tying:
        raise ConfigError(
            f"{checkpoint} ties its output layer to the embedding; gpt-neox's conversion reads an untied "
            "final_linear, so only untied models (no_weight_tying: true, as Pythia and GPT-NeoX-20B) are exported"
        )
    for what, size in (
        ("num_attention_heads", cfg.num_attention_heads),
        ("vocab_size", cfg.vocab_size),
        ("4 x hidden_size", 4 * cfg.hidden_size),
    ):
        if size % partitions:
            raise ConfigError(f"--model-parallel-size {partitions} does not divide {what} ({size})")
    with open_weights(checkpoint) as ours, atomic_directory(out_dir, overwrite=overwrite) as tmp:

        def save(index: int, state: dict[str, torch.Tensor]) -> None:
            slices = {key: split(key, tensor, partitions) for key, tensor in state.items()}
            for rank in range(partitions):
                torch.save(
                    {key: parts[rank] for key, parts in slices.items()}, tmp / LAYER_FILE.format(index=index, rank=rank)
                )

        save(0, {"word_embeddings.weight": ours.get_tensor("embed_in.weight")})
        for layer in range(cfg.num_layers):
            state = {key: ours.get_tensor(f"layers.{layer}.{key}") for key in NORMS + COLUMN + ROW + ROW_BIAS}
            save(layer + 2, state)
        save(cfg.num_layers + 3, {f"norm.{p}": ours.get_tensor(f"final_layer_norm.{p}") for p in ("weight", "bias")})
        save(cfg.num_layers + 4, {"final_linear.weight": ours.get_tensor("embed_out.weight")})
        config = {**cfg.to_neox(), "model_parallel_size": partitions, "pipe_parallel_size": 1}
        tokenizer = checkpoint / TOKENIZER_FILE
        if tokenizer.is_file():
            (tmp / TOKENIZER_FILE).write_bytes(tokenizer.read_bytes())
            # absolute: the conversion script opens it from wherever it runs
            config.update(tokenizer_type="HFTokenizer", vocab_file=str(Path(out_dir).resolve() / TOKENIZER_FILE))
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(out_dir)
