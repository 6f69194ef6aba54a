"""The `neox` command line. Each subcommand is a thin shell over the Python API; `neox COMMAND --help` explains it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from neox.errors import ConfigError, NeoxError

app = typer.Typer(
    name="neox",
    help="neox-pipeline: train, evaluate and convert GPT-NeoX language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DtypeOption = Annotated[str, typer.Option(help="Weight dtype to write: float32, bfloat16 or float16.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists (swapped in only when complete).")]


@app.command()
def params(
    config: Annotated[list[Path], typer.Argument(help="GPT-NeoX YAML config file(s); later files override earlier ones.")],
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size before padding (50277 for the 20B tokenizer).")] = 50277,
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


@app.command("init-model")
def init_model(
    config: Annotated[list[Path], typer.Argument(help="GPT-NeoX YAML config file(s).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write.")],
    vocab_size: Annotated[int | None, typer.Option(help="Tokenizer vocabulary size (default: the tokenizer's).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.json to store with the model.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the initialisation.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a freshly initialised (untrained) model checkpoint with GPT-NeoX's init methods.

    Example: neox init-model configs/model/tiny.yml --out runs/tiny-init --tokenizer tokenizer.json
    """
    from neox.model.checkpoint import init_checkpoint

    model = init_checkpoint(config, out_dir, vocab_size=vocab_size, tokenizer_file=tokenizer, seed=seed, overwrite=overwrite)
    typer.echo(f"wrote {out_dir} ({sum(p.numel() for p in model.parameters()):,} parameters)")


@app.command("export-hf")
def export_hf(
    checkpoint: Annotated[Path, typer.Argument(help="A neox model checkpoint directory (config.yml + model.safetensors).")],
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


@app.command("import-hf")
def import_hf(
    hf_dir: Annotated[Path, typer.Argument(help="A Hugging Face GPTNeoXForCausalLM directory (e.g. a Pythia download).")],
    out_dir: Annotated[Path, typer.Argument(help="neox checkpoint directory to write.")],
    overwrite: OverwriteOption = False,
) -> None:
    """Convert a Hugging Face GPT-NeoX model into a neox checkpoint, bit for bit.

    Example: neox import-hf ~/models/pythia-70m runs/pythia-70m
    """
    from neox.model import hf

    hf.import_hf(hf_dir, out_dir, overwrite=overwrite)
    typer.echo(f"wrote {out_dir}")


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="A neox checkpoint or a Hugging Face GPT-NeoX directory.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding; higher is more random.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample only among the k most likely tokens (0: off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Sample only from the smallest set of tokens with this probability mass (1: off).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed for sampling.")] = 0,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.json (default: the one stored with the model).")] = None,
) -> None:
    """Continue a prompt with the model, using its KV cache.

    Example: neox generate runs/pythia-70m --prompt "Once upon a time" --max-new-tokens 20 --temperature 0.8 --top-p 0.9
    """
    from neox.model.generate import SamplingConfig
    from neox.model.prompt import continue_prompt

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    typer.echo(continue_prompt(model, prompt, sampling, seed=seed, tokenizer_file=tokenizer))


WorkRootOption = Annotated[Path, typer.Option(help="Root of the content-addressed stage outputs (<work-root>/<stage>/<key>/).")]
WorkersOption = Annotated[int | None, typer.Option(help="Shards processed at once (default: every CPU Ray has).")]
RayOption = Annotated[str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")]


@app.command("sample-corpus")
def sample_corpus(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write 00.jsonl.zst, 01.jsonl.zst, ... into.")],
    shards: Annotated[int, typer.Option(help="Number of shards.")] = 4,
) -> None:
    """Build Pile-format shards from text every Python install carries: the standard library's .py sources
    (as 'Github') and pydoc topics (as 'Docs'), about 32 MB. The default corpus of `make demo`.

    Example: neox sample-corpus work/mirror --shards 4
    """
    from neox.data.sample import build_sample_corpus

    paths = build_sample_corpus(out_dir, shards=shards)
    typer.echo(f"wrote {len(paths)} shards to {out_dir}")


@app.command()
def download(
    urls: Annotated[list[str] | None, typer.Argument(help="Sources: https://, http://, s3://bucket/key, file:///path, a path, or hf://datasets/ORG/NAME; append #sha256=HEX to check a published checksum.")] = None,
    pile_mirror: Annotated[str | None, typer.Option(help="Download the Pile's train 00-29, val and test shards from this mirror base URL.")] = None,
    work_root: WorkRootOption = Path("work"),
    workers: Annotated[int, typer.Option(help="Parallel downloads.")] = 4,
    retries: Annotated[int, typer.Option(help="Attempts per file (resuming each time).")] = 5,
) -> None:
    """Download raw shards: resumable (HTTP Range, S3 ranged GETs), retried with backoff, sha256-checked
    (a published checksum, or the one recorded at the first download), published atomically.

    Example: neox download https://host/pile/val.jsonl.zst s3://bucket/shards/00.jsonl.zst --work-root work
    """
    from neox.data.download import Retry, download_sources, sources_for

    out = download_sources(sources_for(urls or [], pile_mirror), work_root, workers=workers, retry=Retry(attempts=retries))
    typer.echo(str(out))


@app.command()
def dedup(
    input_dir: Annotated[Path, typer.Argument(help="Directory of Pile-format shards (*.jsonl.zst or *.jsonl).")],
    work_root: WorkRootOption = Path("work"),
    ngram: Annotated[int, typer.Option(help="Words per shingle.")] = 5,
    num_perm: Annotated[int, typer.Option(help="MinHash permutations.")] = 128,
    bands: Annotated[int, typer.Option(help="LSH bands.")] = 16,
    rows: Annotated[int, typer.Option(help="Rows per LSH band (bands x rows <= num_perm).")] = 8,
    threshold: Annotated[float, typer.Option(help="Minimum estimated Jaccard similarity of a near-duplicate.")] = 0.8,
    workers: WorkersOption = None,
    ray_address: RayOption = None,
) -> None:
    """Remove exact duplicates (normalised text hash) and near-duplicates (MinHash LSH over word n-grams),
    keeping the first document of each cluster. The manifest lists counts per pile_set_name and every cluster.

    Example: neox dedup work/download/<key> --work-root work
    """
    from neox.data.dedup import DedupConfig, dedup_shards

    cfg = DedupConfig(ngram=ngram, num_perm=num_perm, bands=bands, rows=rows, threshold=threshold)
    typer.echo(str(dedup_shards(input_dir, work_root, cfg, workers=workers, ray_address=ray_address)))


@app.command("train-tokenizer")
def train_tokenizer(
    input_dir: Annotated[Path | None, typer.Argument(help="Shards to train on (omit with --from).")] = None,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size, special tokens included.")] = 50277,
    from_: Annotated[str | None, typer.Option("--from", help="Use an existing tokenizer.json (path or URL) instead of training.")] = None,
    work_root: WorkRootOption = Path("work"),
) -> None:
    """Train a byte-level BPE like GPT-NeoX-20B's (<|endoftext|>, <|padding|>), or adopt an existing
    tokenizer.json such as 20B_tokenizer.json. Prints the tokenizer's path.

    Example: neox train-tokenizer work/dedup/<key> --vocab-size 8192
    """
    from neox.data.tokenizer import tokenizer_stage

    typer.echo(str(tokenizer_stage(work_root, vocab_size, input_dir=input_dir, source=from_)))


@app.command()
def tokenize(
    input_dir: Annotated[Path, typer.Argument(help="Directory of Pile-format shards.")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer.json to encode with.")],
    prefix: Annotated[str, typer.Option(help="Output name: PREFIX_text_document.{bin,idx}.")] = "corpus",
    work_root: WorkRootOption = Path("work"),
    workers: WorkersOption = None,
    ray_address: RayOption = None,
) -> None:
    """Tokenize shards into a GPT-NeoX/Megatron mmap indexed dataset (.bin/.idx), byte-compatible with
    gpt-neox's preprocess_data.py --append-eod. Prints the stage output directory.

    Example: neox tokenize work/dedup/<key> --tokenizer work/tokenizer/<key>/tokenizer.json
    """
    from neox.data.tokenize import TokenizeConfig, tokenize_shards

    out = tokenize_shards(input_dir, tokenizer, work_root, TokenizeConfig(prefix=prefix), workers=workers, ray_address=ray_address)
    typer.echo(str(out))


@app.command("train")
def train_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML with a `train:` section (e.g. configs/pipeline/local.yaml).")],
    data: Annotated[Path | None, typer.Option(help="Tokenize stage output to train on (overrides train.data).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the stopped run of the same name from its latest checkpoint.")] = False,
    allow_new_data: Annotated[bool, typer.Option(help="On --resume, accept a different dataset (continued pretraining).")] = False,
    train_iters: Annotated[int | None, typer.Option(help="Override train.train_iters.")] = None,
    name: Annotated[str | None, typer.Option(help="Override train.name (the run's folder under storage_path).")] = None,
) -> None:
    """Train GPT-NeoX with DeepSpeed on Ray Train workers; metrics go to MLflow and the run folder, checkpoints
    every checkpoint_interval steps, final weights to <run>/final/{model,hf}. Without train.data or --data,
    the config's `data:` section is prepared first (finished data stages are reused). Prints the run folder.

    Example: neox train configs/pipeline/local.yaml
    """
    from neox.pipeline.commands import train_from_config

    overrides = {k: v for k, v in {"data": str(data) if data else None, "train_iters": train_iters, "name": name}.items() if v is not None}
    typer.echo(train_from_config(config, overrides, resume=resume, allow_new_data=allow_new_data))


@app.command("check")
def check_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML (e.g. configs/pipeline/pile-pythia-160m.yaml).")],
) -> None:
    """Validate a whole pipeline config (work_root, data, train with its model YAML, eval, registry, retrain)
    without running anything; the flows run the same check before their first stage.

    Example: neox check configs/pipeline/local.yaml
    """
    from neox.pipeline.check import describe

    typer.echo(describe(config))


@app.command("data")
def data_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML with a `data:` section.")],
) -> None:
    """Run the data stages a pipeline config describes (corpus -> download -> dedup -> tokenizer -> tokenize);
    finished stages are reused. Prints the tokenized dataset's directory.

    Example: neox data configs/pipeline/local.yaml
    """
    from neox.pipeline.commands import prepare_data_from_config

    typer.echo(str(prepare_data_from_config(config)))


TrackingOption = Annotated[str, typer.Option(help="MLflow tracking URI (a sqlite:/// file or an http:// server).")]


@app.command("eval-data")
def eval_data_command(
    dataset: Annotated[Path, typer.Argument(help="A tokenize stage output (the dataset the model trained on).")],
    work_root: WorkRootOption = Path("work"),
    split: Annotated[str, typer.Option(help="The training run's train/valid/test split weights.")] = "969,30,1",
    part: Annotated[str, typer.Option(help="Which part of the split to build from: test (default) or valid.")] = "test",
    max_documents: Annotated[int, typer.Option(help="Documents to take from that part at most.")] = 500,
    lastword_chars: Annotated[int, typer.Option(help="Characters of each last-word passage before its target word.")] = 400,
) -> None:
    """Build the offline lm-eval task data (held-out perplexity and LAMBADA-style last word) from the documents
    the training split left out. Prints the output folder for `neox eval --eval-data`.

    Example: neox eval-data work/tokenize/<key> --split 949,50,1
    """
    from neox.eval.data import EvalDataConfig, eval_data_stage

    cfg = EvalDataConfig(split=split, part=part, max_documents=max_documents, lastword_chars=lastword_chars)
    typer.echo(str(eval_data_stage(dataset, work_root, cfg)))


@app.command("eval")
def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="A neox checkpoint folder, e.g. <run>/final/model.")],
    eval_data: Annotated[Path | None, typer.Option(help="The eval-data stage output (needed by the offline tasks).")] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks: neox_heldout, neox_lastword, and/or lm-eval task names (pythia: the Pythia suite).")] = "neox_heldout,neox_lastword",
    model: Annotated[str, typer.Option(help="neox (our adapter) or hf (lm-eval's own model on <run>/final/hf).")] = "neox",
    batch_size: Annotated[int, typer.Option(help="Requests per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    limit: Annotated[int | None, typer.Option(help="Examples per task (default: whole tasks).")] = None,
    work_root: WorkRootOption = Path("work"),
    mlflow_tracking_uri: TrackingOption = "sqlite:///mlflow.db",
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the eval run.")] = "neox-pipeline",
) -> None:
    """Evaluate a checkpoint with lm-eval; print the metrics table, log them (and lm-eval's results JSON) to a
    new MLflow run, and write both into the eval stage output, whose folder is printed last.

    Example: neox eval work/train/demo/final/model --eval-data work/eval-data/<key>
    """
    from neox.eval.run import EVAL_METRICS_FILE, EvalConfig, eval_stage, log_eval, metrics_table, task_names

    cfg = EvalConfig(tasks=task_names(tasks), batch_size=batch_size, device=device, limit=limit, model=model)
    out = eval_stage(checkpoint, eval_data, work_root, cfg)
    typer.echo(metrics_table(json.loads((out / EVAL_METRICS_FILE).read_text())))
    typer.echo(f"MLflow run {log_eval(out, mlflow_tracking_uri, experiment)} in experiment {experiment}")
    typer.echo(str(out))


@app.command("register")
def register_command(
    eval_output: Annotated[Path, typer.Argument(help="An eval stage output (printed by `neox eval`).")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "neox-tiny",
    work_root: Annotated[Path | None, typer.Option(help="Where the data stages ran, for the lineage tags.")] = Path("work"),
    mlflow_tracking_uri: TrackingOption = "sqlite:///mlflow.db",
    promote: Annotated[bool, typer.Option(help="Run the promotion gate on the new version.")] = True,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the eval run the version is logged in.")] = "neox-pipeline",
    config: Annotated[Path | None, typer.Option(help="Pipeline config whose registry.rule is the promotion rule.")] = None,
) -> None:
    """Register the evaluated checkpoint as a new MLflow model version (lineage in its tags), then run the
    promotion gate: alias `candidate`, and `champion` if its metrics beat the current champion's.

    Example: neox register work/eval/<key> --name neox-tiny
    """
    from neox.registry.mlflow_registry import register

    version = register(eval_output, name, mlflow_tracking_uri, work_root, experiment)
    typer.echo(f"{name} version {version}")
    if promote:
        _promote(name, version, config, mlflow_tracking_uri)


@app.command("promote")
def promote_command(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to consider for champion.")],
    mlflow_tracking_uri: TrackingOption = "sqlite:///mlflow.db",
    config: Annotated[Path | None, typer.Option(help="Pipeline config whose registry.rule is the promotion rule.")] = None,
) -> None:
    """Run the promotion gate on a registered version (idempotent: safe to repeat).

    Example: neox promote neox-tiny 3 --config configs/pipeline/local.yaml
    """
    _promote(name, version, config, mlflow_tracking_uri)


def _promote(name: str, version: str, config: Path | None, tracking_uri: str) -> None:
    from neox.pipeline.commands import promote_by_config

    decision = promote_by_config(name, version, tracking_uri, config)
    verdict = "champion" if decision.promote else "not promoted"
    typer.echo(f"{name} version {version}: {verdict} ({'; '.join(decision.reasons)})")


cluster_app = typer.Typer(help="The cluster infra/terraform/aws stands up, as the pipeline config sees it.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("config")
def cluster_config(
    outputs: Annotated[Path, typer.Argument(help="`terraform output -json` of infra/terraform/aws, saved to a file.")],
    base: Annotated[Path | None, typer.Option(help="A pipeline config to fill in (e.g. configs/pipeline/pile-neox-20b.yaml); "
                                                   "without it only the cluster part is printed.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the filled-in config here (checked first) instead of printing it.")] = None,
    work_root: Annotated[str | None, typer.Option(help="A path every node shares, when the cluster has no FSx.")] = None,
) -> None:
    """Render a pipeline config's cluster part from Terraform's outputs: Ray address, work root on FSx,
    checkpoints on the bucket, one training worker per GPU, the MLflow server's in-VPC address, and the
    NCCL/EFA environment (FI_PROVIDER=efa, ...) for every training worker.

    With --base, the rest of the config is kept, the Pile mirror moves to the cluster's bucket and gradient
    accumulation is set so the global batch stays what the base config says.

    Example: neox cluster config cluster.json --base configs/pipeline/pile-neox-20b.yaml --output configs/cluster/pile-neox-20b.yaml
    """
    import yaml

    from neox.pipeline.cluster import cluster_part, filled_in, read_outputs, write_cluster_config

    if base is None:
        if output is not None:
            raise ConfigError("--output writes a whole pipeline config: give --base too")
        typer.echo(yaml.safe_dump(cluster_part(read_outputs(outputs), work_root), sort_keys=False), nl=False)
    elif output is None:
        typer.echo(filled_in(outputs, base, work_root)[0], nl=False)
    else:
        train = write_cluster_config(outputs, base, output, work_root)["train"]
        typer.echo(f"wrote {output}: {train['num_workers']} GPU workers, global batch kept with "
                   f"gradient_accumulation_steps {train.get('gradient_accumulation_steps', 1)}")


def main() -> None:
    try:
        app()
    except NeoxError as err:  # the user's to fix: one line; anything else is a bug and keeps its traceback
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
