"""Our model checkpoint directory: `config.yml` (the model's GPT-NeoX keys), `model.safetensors`, and the
tokenizer (`tokenizer.json`) when there is one. Training exports its final weights to this form."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from neox.errors import ConfigError, DataError, MissingInput
from neox.model.config import ModelConfig, load_model_config
from neox.model.gpt_neox import GPTNeoX, initialized
from neox.model.streaming import write_safetensors
from neox.pipeline.atomic import atomic_directory
from neox.pipeline.layout import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def save_model(
    model: GPTNeoX, out_dir: str | Path, tokenizer_file: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write model (config + weights, and the tokenizer file if given) to out_dir, atomically."""
    if tokenizer_file is not None and not Path(tokenizer_file).is_file():
        raise MissingInput(f"tokenizer file {tokenizer_file} does not exist")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(model.cfg.to_neox(), sort_keys=False))
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
    return Path(out_dir)


def dense_specs(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every weight of the model `cfg` describes, in its order (built on the meta device)."""
    with torch.device("meta"):
        return [(name, tuple(p.shape)) for name, p in GPTNeoX(cfg).named_parameters()]


def save_model_streaming(
    cfg: ModelConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    out_dir: str | Path,
    tokenizer_file: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """`save_model` for weights that arrive one tensor at a time, in the model's order (gathered from ranks, or read
    from a sharded checkpoint), stored as fp32: only the tensor being written is in memory."""
    if tokenizer_file is not None and not Path(tokenizer_file).is_file():
        raise MissingInput(f"tokenizer file {tokenizer_file} does not exist")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_neox(), sort_keys=False))
        write_safetensors(tmp / WEIGHTS_FILE, dense_specs(cfg), torch.float32, tensors, metadata={"format": "pt"})
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
    return Path(out_dir)


def load_model_config_from(checkpoint: str | Path) -> ModelConfig:
    path = Path(checkpoint) / CONFIG_FILE
    if not path.exists():
        raise MissingInput(f"{checkpoint} is not a neox model checkpoint: {CONFIG_FILE} is missing")
    cfg, _ = load_model_config(path)
    return cfg


def load_model(checkpoint: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> GPTNeoX:
    """Load a checkpoint written by save_model. Built on the meta device, so memory holds one copy of the weights."""
    cfg = load_model_config_from(checkpoint)
    weights = Path(checkpoint) / WEIGHTS_FILE
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    with open_weights(checkpoint, device) as saved:
        state = {name: saved.get_tensor(name) for name in saved.keys()}
    if dtype is not None:
        state = {name: tensor.to(dtype) for name, tensor in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # torch's message lists the missing, unexpected and mis-shaped tensors
        raise DataError(f"{weights} does not hold the model {CONFIG_FILE} describes: {err}") from None
    return model.eval()


@contextlib.contextmanager
def open_weights(checkpoint: str | Path, device: str | torch.device = "cpu") -> Iterator:
    """The checkpoint's weights file, open for reading tensor by tensor; one missing, cut short or not safetensors
    at all is an error naming it, not safetensors' own."""
    weights = Path(checkpoint) / WEIGHTS_FILE
    if weights.is_dir():
        raise DataError(f"{weights} is a folder, not a weights file")
    if not weights.is_file():
        raise MissingInput(f"{weights} is missing")
    try:
        opened = safe_open(str(weights), framework="pt", device=str(device))
    except (SafetensorError, OSError) as err:
        raise DataError(f"{weights} cannot be read ({err}): the checkpoint is damaged or was cut short") from None
    with opened as saved:
        yield saved


def tokenizer_path(checkpoint: str | Path) -> Path | None:
    path = Path(checkpoint) / TOKENIZER_FILE
    return path if path.exists() else None


def init_checkpoint(
    model_configs: list[str | Path],
    out_dir: str | Path,
    vocab_size: int | None = None,
    tokenizer_file: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> GPTNeoX:
    """Write an untrained model with GPT-NeoX's init methods; the vocabulary is `vocab_size` or the tokenizer's."""
    if vocab_size is None and tokenizer_file is None:
        raise ConfigError("give --vocab-size or --tokenizer (its size sets the vocabulary)")
    tokens = None if tokenizer_file is None else read_tokenizer(tokenizer_file).get_vocab_size()
    if vocab_size is None:
        vocab_size = tokens
    elif tokens is not None and vocab_size < tokens:  # ids past the embedding would crash generation later
        raise ConfigError(f"--vocab-size {vocab_size} is smaller than the tokenizer's {tokens} tokens")
    cfg, _ = load_model_config(*model_configs, vocab_size=vocab_size)
    model = initialized(cfg, seed)
    save_model(model, out_dir, tokenizer_file=tokenizer_file, overwrite=overwrite)
    return model


def read_tokenizer(path: str | Path):
    """A `tokenizers` tokenizer from its JSON file, with the file named in the error when it is not one."""
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise MissingInput(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for any unreadable file
        raise DataError(f"{path} is not a Hugging Face tokenizers JSON file: {err}") from None
