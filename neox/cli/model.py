"""`neox` commands on models: params, init-model, export-hf, import-hf, import-neox, export-neox, generate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from neox.cli.app import TOOLS, app

DtypeOption = Annotated[Literal["float32", "bfloat16", "float16"], typer.Option(help="Weight dtype to write.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists (swapped in only when complete).")]


@app.command(rich_help_panel=TOOLS, short_help="Print the parameter count of a GPT-NeoX model config.")
def params(
    config: Annotated[
        list[Path], typer.Argument(help="GPT-NeoX YAML config file(s); later files override earlier ones.")
    ],
    vocab_size: Annotated[
        int, typer.Option(help="Tokenizer vocabulary size before padding (50277 for the 20B tokenizer).")
    ] = 50277,
) -> None:
    """Print the parameter count of the model a GPT-NeoX config describes.

    The vocabulary is padded like GPT-NeoX does (to a multiple of make_vocab_size_divisible_by x
    model_parallel_size). The model is built on the meta device, so even 20B costs no memory.

    Example: neox params configs/model/pythia-160m.yml --vocab-size 50277
    """
    from neox.model.config import load_model_config
    from neox.model.gpt_neox import count_parameters

    cfg, _ = load_model_config(*config, vocab_size=vocab_size)
    typer.echo(f"{count_parameters(cfg):,}")


@app.command("init-model", rich_help_panel=TOOLS, short_help="Write an untrained checkpoint (GPT-NeoX's init).")
def init_model(
    config: Annotated[list[Path], typer.Argument(help="GPT-NeoX YAML config file(s).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
    vocab_size: Annotated[
        int | None, typer.Option(help="Tokenizer vocabulary size (default: the tokenizer's).")
    ] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.json to store with the model.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the initialisation.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a freshly initialised (untrained) model checkpoint with GPT-NeoX's init methods.

    Example: neox init-model configs/model/tiny.yml --out runs/tiny-init --tokenizer tokenizer.json
    """
    from neox.model.checkpoint import init_checkpoint

    model = init_checkpoint(
        config, out_dir, vocab_size=vocab_size, tokenizer_file=tokenizer, seed=seed, overwrite=overwrite
    )
    typer.echo(f"wrote {out_dir} ({sum(p.numel() for p in model.parameters()):,} parameters)")


@app.command("export-hf", rich_help_panel=TOOLS, short_help="Export a checkpoint as a Hugging Face model folder.")
def export_hf(
    checkpoint: Annotated[
        Path, typer.Argument(help="A neox model checkpoint directory (config.yml + model.safetensors).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Hugging Face GPTNeoXForCausalLM directory to write.")],
    dtype: DtypeOption = "float32",
    overwrite: OverwriteOption = False,
) -> None:
    """Export a checkpoint as a Hugging Face GPTNeoXForCausalLM directory (config.json, model.safetensors,
    tokenizer files when the checkpoint has a tokenizer), loadable offline by AutoModelForCausalLM.

    Example: neox export-hf runs/tiny-init hf/tiny --dtype bfloat16
    """
    from neox.model import hf
    from neox.model.checkpoint import parse_dtype

    hf.export_hf(checkpoint, out_dir, dtype=parse_dtype(dtype), overwrite=overwrite)
    typer.echo(f"wrote {out_dir}")


@app.command("import-hf", rich_help_panel=TOOLS, short_help="Convert a Hugging Face GPT-NeoX model to a checkpoint.")
def import_hf(
    hf_dir: Annotated[
        Path, typer.Argument(help="A Hugging Face GPTNeoXForCausalLM directory (e.g. a Pythia download).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="neox checkpoint directory to write.")],
    overwrite: OverwriteOption = False,
) -> None:
    """Convert a Hugging Face GPT-NeoX model into a neox checkpoint, bit for bit.

    Example: neox import-hf ~/models/pythia-70m runs/pythia-70m
    """
    from neox.model import hf

    hf.import_hf(hf_dir, out_dir, overwrite=overwrite)
    typer.echo(f"wrote {out_dir}")


@app.command("import-neox", rich_help_panel=TOOLS, short_help="Convert a gpt-neox (EleutherAI) checkpoint.")
def import_neox(
    directory: Annotated[
        Path, typer.Argument(help="gpt-neox's global_stepN folder (per-layer or mp_rank_XX files, any TP size).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="neox checkpoint directory to write.")],
    config: Annotated[
        list[Path], typer.Option("--config", help="The run's gpt-neox model YAML (repeat for several files).")
    ],
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.json to keep with the checkpoint.")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Convert a checkpoint written by EleutherAI's gpt-neox into a neox checkpoint, merging its tensor-parallel
    partitions. Its files are loaded with weights_only (no code in them is run). docs/neox-checkpoints.md
    describes the layouts.

    Example: neox import-neox ckpts/global_step143000 runs/pythia-160m --config pythia-160m.yml
    """
    from neox.model.neox_checkpoint import import_neox as convert

    convert(directory, [str(c) for c in config], out_dir, tokenizer_file=tokenizer, overwrite=overwrite)
    typer.echo(f"wrote {out_dir}")


@app.command("export-neox", rich_help_panel=TOOLS, short_help="Write a checkpoint in gpt-neox's per-layer layout.")
def export_neox(
    checkpoint: Annotated[Path, typer.Argument(help="A neox model checkpoint directory.")],
    out_dir: Annotated[Path, typer.Argument(help="The gpt-neox checkpoint folder to write.")],
    model_parallel_size: Annotated[int, typer.Option(min=1, help="Tensor-parallel partitions to cut it into.")] = 1,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a checkpoint as gpt-neox writes one with pipe_parallel_size >= 1 (layer_XX-model_YY-model_states.pt),
    cut for --model-parallel-size ranks, with a config.yml for gpt-neox's tools/ckpts/convert_neox_to_hf.py.

    Example: neox export-neox runs/tiny-local/final/model neox-ckpt/global_step200 --model-parallel-size 2
    """
    from neox.model.neox_checkpoint import export_neox as convert

    convert(checkpoint, out_dir, partitions=model_parallel_size, overwrite=overwrite)
    typer.echo(f"wrote {out_dir}")


@app.command(rich_help_panel=TOOLS, short_help="Continue a prompt with a checkpoint.")
def generate(
    model: Annotated[Path, typer.Argument(help="A neox checkpoint or a Hugging Face GPT-NeoX directory.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding; higher is more random.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample only among the k most likely tokens (0: off).")] = 0,
    top_p: Annotated[
        float, typer.Option(help="Sample only from the smallest set of tokens with this probability mass (1: off).")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed for sampling.")] = 0,
    tokenizer: Annotated[
        Path | None, typer.Option(help="tokenizer.json (default: the one stored with the model).")
    ] = None,
) -> None:
    """Continue a prompt with the model, using its KV cache.

    Example: neox generate runs/pythia-70m --prompt "Once upon a time" --max-new-tokens 20 --temperature 0.8 --top-p 0.9
    """
    from neox.model.generate import SamplingConfig
    from neox.model.prompt import continue_prompt

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    typer.echo(continue_prompt(model, prompt, sampling, seed=seed, tokenizer_file=tokenizer))
