"""Export to and import from Hugging Face `GPTNeoXForCausalLM` directories.

Our parameter names are Hugging Face's without the `gpt_neox.` prefix, and the output layer is stored as
`embed_out.weight` as every GPT-NeoX checkpoint on the Hub does (transformers 5 maps it to `lm_head`).
Unlike GPT-NeoX's own exporter we write `hidden_act` from the GELU the model trained with: a
`bias_gelu_fusion` model uses the tanh approximation and is exported as `gelu_pytorch_tanh`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from neox.errors import ConfigError, DataError
from neox.model.checkpoint import dense_specs, load_model_config_from, open_weights, save_model
from neox.model.config import ModelConfig
from neox.model.gpt_neox import GPTNeoX
from neox.model.streaming import write_safetensors
from neox.pipeline.atomic import atomic_directory
from neox.pipeline.configfile import parse
from neox.pipeline.layout import (
    CHAT_TEMPLATE_FILE,
    CONFIG_FILE,
    HF_CONFIG_FILE,
    HF_TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)

HF_PREFIX = "gpt_neox."
OUTPUT_LAYER = "embed_out.weight"
HF_OUTPUT_LAYER_NAMES = (OUTPUT_LAYER, "lm_head.weight")
# transformers' names for the two GELUs our model computes.
EXACT_GELU = "gelu"
TANH_GELU = "gelu_pytorch_tanh"
TANH_GELU_ALIASES = {TANH_GELU, "gelu_new", "gelu_fast", "gelu_accurate"}
EOS_TOKEN = "<|endoftext|>"


def hf_config(
    cfg: ModelConfig, dtype: torch.dtype, eos_token_id: int | None, bos_token_id: int | None
) -> dict[str, Any]:
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.ffn_size,
        "hidden_act": TANH_GELU if cfg.bias_gelu_fusion else EXACT_GELU,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(cfg.rotary_emb_base),
            "partial_rotary_factor": cfg.rotary_pct,
        },
        # transformers 4.x reads these two; 5.x reads rope_parameters.
        "rotary_pct": cfg.rotary_pct,
        "rotary_emb_base": cfg.rotary_emb_base,
        "use_parallel_residual": cfg.gpt_j_residual,
        "tie_word_embeddings": not cfg.no_weight_tying,
        "layer_norm_eps": cfg.layernorm_epsilon,
        "hidden_dropout": cfg.hidden_dropout,
        "attention_dropout": cfg.attention_dropout,
        "attention_bias": True,
        "initializer_range": cfg.init_method_std,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig from a Hugging Face GPT-NeoX config.json dict (transformers 4.x or 5.x spelling)."""
    if hf.get("model_type") != "gpt_neox":
        raise ConfigError(f"not a GPT-NeoX model: model_type is {hf.get('model_type')!r}")
    act = hf.get("hidden_act", EXACT_GELU)
    if act != EXACT_GELU and act not in TANH_GELU_ALIASES:
        raise ConfigError(f"hidden_act {act!r} is not a GELU this model implements ({EXACT_GELU}, {TANH_GELU})")
    if hf.get("attention_bias", True) is False:
        raise ConfigError("attention_bias=false is not supported: GPT-NeoX attention has biases")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_type {rope['rope_type']!r} is not supported (only 'default' rotary)")
    values = dict(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        num_attention_heads=hf["num_attention_heads"],
        vocab_size=hf["vocab_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        intermediate_size=hf.get("intermediate_size"),
        rotary_pct=float(rope.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))),
        rotary_emb_base=int(rope.get("rope_theta", hf.get("rotary_emb_base", 10000))),
        gpt_j_residual=hf.get("use_parallel_residual", True),
        no_weight_tying=not hf.get("tie_word_embeddings", False),
        bias_gelu_fusion=act in TANH_GELU_ALIASES,
        layernorm_epsilon=float(hf.get("layer_norm_eps", 1e-5)),
        hidden_dropout=float(hf.get("hidden_dropout", 0.0)),
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )
    return parse(ModelConfig, values, "config.json")


def hf_name(name: str) -> str:
    """Hugging Face's name for one of our parameters."""
    return name if name == OUTPUT_LAYER else HF_PREFIX + name


def from_hf_state_dict(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if name in HF_OUTPUT_LAYER_NAMES:
            if not tied:
                out[OUTPUT_LAYER] = tensor
        elif name.startswith(HF_PREFIX):
            key = name.removeprefix(HF_PREFIX)
            if not key.endswith(("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")):  # old buffers
                out[key] = tensor
        else:
            raise ConfigError(f"unexpected tensor {name!r} in a GPTNeoXForCausalLM checkpoint")
    return out


def _special_token_ids(tokenizer_file: Path | None) -> tuple[int | None, int | None]:
    """(bos, eos) ids: GPT-NeoX tokenizers use <|endoftext|> for both."""
    if tokenizer_file is None:
        return None, None
    spec = json.loads(tokenizer_file.read_text())
    ids = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab = spec.get("model", {}).get("vocab")
    eos = ids.get(EOS_TOKEN, vocab.get(EOS_TOKEN) if isinstance(vocab, dict) else None)
    return eos, eos


def export_hf(
    checkpoint: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32, overwrite: bool = False
) -> Path:
    """Write a GPTNeoXForCausalLM directory (config.json, model.safetensors, tokenizer files when the
    checkpoint has a tokenizer) that `transformers.AutoModelForCausalLM.from_pretrained` loads offline."""
    checkpoint = Path(checkpoint)
    refuse_same_folder(checkpoint, out_dir)
    cfg = load_model_config_from(checkpoint)
    tokenizer_file = checkpoint / TOKENIZER_FILE
    tokenizer_file = tokenizer_file if tokenizer_file.exists() else None
    bos, eos = _special_token_ids(tokenizer_file)
    specs = dense_specs(cfg)
    with open_weights(checkpoint) as ours, atomic_directory(out_dir, overwrite=overwrite) as tmp:
        config = hf_config(cfg, dtype, eos_token_id=eos, bos_token_id=bos)
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        missing = [name for name, _ in specs if name not in ours.keys()]
        if missing:
            weights = checkpoint / WEIGHTS_FILE
            raise DataError(f"{weights} does not hold the model {CONFIG_FILE} describes: {missing[0]} is missing")
        # tensor by tensor, so a 20B export holds one tensor in memory, not the model
        write_safetensors(
            tmp / WEIGHTS_FILE,
            [(hf_name(name), shape) for name, shape in specs],
            dtype,
            ((hf_name(name), ours.get_tensor(name)) for name, _ in specs),
            metadata={"format": "pt"},
        )
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
            special = {"eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN} if eos is not None else {}
            tokenizer_config = {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": cfg.max_position_embeddings,
                **special,
            }
            if (checkpoint / CHAT_TEMPLATE_FILE).exists():  # fine-tuned on chats: apply_chat_template renders as it
                tokenizer_config["chat_template"] = (checkpoint / CHAT_TEMPLATE_FILE).read_text()
            (tmp / HF_TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return Path(out_dir)


def load_hf_model(hf_dir: str | Path) -> GPTNeoX:
    """Our model holding the weights of a GPTNeoXForCausalLM directory (single or sharded safetensors),
    with their dtype and bits as they are."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / HF_CONFIG_FILE
    if not config_path.exists():
        raise ConfigError(f"{hf_dir} is not a Hugging Face model directory: config.json is missing")
    try:
        cfg = model_config_from_hf(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{config_path} is not a readable GPT-NeoX config ({type(err).__name__}: {err})") from None
    state: dict[str, torch.Tensor] = {}
    for file in safetensors_weights(hf_dir):
        try:
            state.update(load_file(file))
        except Exception as err:  # safetensors raises its own error type for a damaged header or short file
            raise DataError(f"{file} is not a readable safetensors file ({err})") from None
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    converted = from_hf_state_dict(state, tied=not cfg.no_weight_tying)
    expected = set(model.state_dict())
    if set(converted) != expected:
        missing, extra = sorted(expected - set(converted)), sorted(set(converted) - expected)
        raise ConfigError(f"{hf_dir}: weights do not match the config (missing {missing[:5]}, unexpected {extra[:5]})")
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def safetensors_weights(hf_dir: Path) -> list[Path]:
    """A Hugging Face directory's .safetensors weight files. Pickled weights (`pytorch_model.bin` and the like) are
    refused, not read: unpickling runs whatever code the file carries."""
    files = sorted(hf_dir.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(
            f"{hf_dir} holds pickled weights ({', '.join(pickles)}), which can carry code: neox reads .safetensors "
            "only. Convert them where you trust the file: AutoModelForCausalLM.from_pretrained(DIR)"
            ".save_pretrained(OUT) writes safetensors."
        )
    raise ConfigError(f"{hf_dir} has no .safetensors weights")


def import_hf(hf_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert a GPTNeoXForCausalLM directory into our checkpoint format, bit for bit."""
    refuse_same_folder(hf_dir, out_dir)
    model = load_hf_model(hf_dir)
    tokenizer = Path(hf_dir) / TOKENIZER_FILE
    return save_model(model, out_dir, tokenizer_file=tokenizer if tokenizer.exists() else None, overwrite=overwrite)


def refuse_same_folder(source: str | Path, out_dir: str | Path) -> None:
    """A conversion writing over its own input would replace the model it reads (with --overwrite, silently)."""
    if Path(source).resolve() == Path(out_dir).resolve():
        raise ConfigError(f"the output folder {out_dir} is the model being converted: give another output folder")
