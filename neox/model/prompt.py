"""Text in, text out: a model folder (our checkpoint or a Hugging Face GPT-NeoX folder) continuing a prompt with
its tokenizer. What `neox generate` runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from neox.errors import ConfigError
from neox.model.checkpoint import load_model, read_tokenizer
from neox.model.generate import SamplingConfig, generate
from neox.model.gpt_neox import GPTNeoX
from neox.model.hf import EOS_TOKEN, load_hf_model
from neox.pipeline.layout import CONFIG_FILE, HF_CONFIG_FILE, TOKENIZER_FILE


def load_model_folder(folder: str | Path) -> GPTNeoX:
    """Our checkpoint (config.yml) or a Hugging Face GPT-NeoX folder (config.json), whichever `folder` is."""
    folder = Path(folder)
    if (folder / CONFIG_FILE).exists():
        return load_model(folder)
    if (folder / HF_CONFIG_FILE).exists():
        return load_hf_model(folder)
    raise ConfigError(f"{folder} is neither a neox checkpoint ({CONFIG_FILE}) nor a Hugging Face model (config.json)")


def continue_prompt(
    folder: str | Path, prompt: str, sampling: SamplingConfig, seed: int = 0, tokenizer_file: str | Path | None = None
) -> str:
    """The prompt followed by the model's continuation (greedy at temperature 0, else sampled with `seed`);
    generation stops at <|endoftext|>. The tokenizer is the one stored with the model unless one is given."""
    model = load_model_folder(folder)
    tokenizer_file = Path(tokenizer_file or Path(folder) / TOKENIZER_FILE)
    if not tokenizer_file.exists():
        raise ConfigError(f"no tokenizer: {tokenizer_file} does not exist (pass --tokenizer)")
    tok = read_tokenizer(tokenizer_file)
    ids = tok.encode(prompt).ids
    if not ids:
        raise ConfigError("the prompt encodes to no tokens")
    sampling = dataclasses.replace(sampling, eos_token_id=tok.token_to_id(EOS_TOKEN))
    out = generate(model, torch.tensor([ids]), sampling, generator=torch.Generator().manual_seed(seed))
    return prompt + tok.decode(out[0, len(ids) :].tolist())
