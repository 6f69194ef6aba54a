"""`neox` commands for the data stages: sample-corpus, download, dedup, train-tokenizer, tokenize, data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neox.cli.app import DATA, ChunkOption, RayOption, WorkersOption, WorkRootOption, app
from neox.data.chunks import DEFAULT_CHUNK_MB
from neox.errors import ConfigError


@app.command(
    "sample-corpus",
    rich_help_panel=DATA,
    short_help="Write the demo corpus: Pile-format shards, ~32 MB.",
)
def sample_corpus(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write 00.jsonl.zst, 01.jsonl.zst, ... into.")],
    shards: Annotated[int, typer.Option(help="Number of shards.")] = 4,
) -> None:
    """Build Pile-format shards from text every Python install carries: the standard library's .py sources
    (as 'Github') and pydoc topics (as 'Docs'), about 32 MB. The default corpus of `make demo`.

    Example: neox sample-corpus work/mirror --shards 4
    """
    from neox.data.jsonl import folder_files, is_shard
    from neox.data.sample import build_sample_corpus, sample_shard_names

    ours = set(sample_shard_names(shards))  # a bad count said before what the folder holds
    found = folder_files(out_dir) if out_dir.is_dir() else []
    # read whole later (`neox download DIR/`), the folder would mix other shards in: an earlier corpus's, say
    if others := sorted(p.name for p in found if is_shard(p) and p.name not in ours):
        raise ConfigError(f"{out_dir} already holds other shards ({', '.join(others[:3])}): give a new folder")
    paths = build_sample_corpus(out_dir, shards=shards)
    typer.echo(f"wrote {len(paths)} shards to {out_dir}")


@app.command(rich_help_panel=DATA, short_help="Download shards (http, s3, file): resumable, checksummed.")
def download(
    urls: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sources: https://, http://, s3://bucket/key, file:///path, a path, or hf://datasets/ORG/NAME; "
            "append #sha256=HEX to check a published checksum."
        ),
    ] = None,
    valid: Annotated[
        list[str] | None,
        typer.Option(
            help="A validation shard (repeatable): training's validation loss reads these; dedup removes "
            "their documents from the training shards."
        ),
    ] = None,
    test: Annotated[
        list[str] | None,
        typer.Option(
            help="A held-out test shard (repeatable): the eval-data stage reads these; dedup removes their "
            "documents from the training shards."
        ),
    ] = None,
    pile_mirror: Annotated[
        str | None,
        typer.Option(
            help="Download the Pile from this mirror base URL: train 00-29 train, val validates, test is held out."
        ),
    ] = None,
    work_root: WorkRootOption = Path("work"),
    workers: Annotated[int, typer.Option(help="Parallel downloads.")] = 4,
    retries: Annotated[
        int, typer.Option(help="Failed attempts in a row (resuming each time) before a file is given up.")
    ] = 5,
    timeout: Annotated[float, typer.Option(help="Seconds to connect, and for each network read.")] = 30.0,
    deadline: Annotated[
        float, typer.Option(help="Give a file up when this many seconds pass without a byte arriving.")
    ] = 90.0,
) -> None:
    """Download raw shards: resumable (HTTP Range, S3 ranged GETs), transient faults (HTTP 429/5xx, resets,
    timeouts) retried with backoff within a deadline, sha256-checked
    (a published checksum, or the one recorded at the first download), published atomically. Validation and
    test shards are listed in the output's splits.json.

    Example: neox download s3://bucket/shards/00.jsonl.zst --valid https://host/pile/val.jsonl.zst --work-root work
    """
    from neox.data.download import download_sources, sources_for
    from neox.pipeline.configfile import parse
    from neox.runtime.retry import Retry

    try:
        retry = parse(Retry, {"attempts": retries, "timeout_s": timeout, "deadline_s": deadline})
    except ConfigError as err:  # named by the flags given, not by the config keys
        message = str(err)
        for key, flag in (("attempts", "--retries"), ("timeout_s", "--timeout"), ("deadline_s", "--deadline")):
            message = message.replace(f"{key}:", f"{flag}:")
        raise ConfigError(message) from None
    sources = sources_for(urls or [], pile_mirror, valid or [], test or [], retry)
    if not sources:
        raise ConfigError("give source URLs or --pile-mirror")
    out = download_sources(sources, work_root, workers=workers, retry=retry).path
    typer.echo(str(out))


@app.command(rich_help_panel=DATA, short_help="Remove exact and near-duplicate documents (MinHash LSH).")
def dedup(
    input_dir: Annotated[Path, typer.Argument(help="Directory of Pile-format shards (*.jsonl.zst or *.jsonl).")],
    work_root: WorkRootOption = Path("work"),
    ngram: Annotated[int, typer.Option(help="Words per shingle.")] = 5,
    num_perm: Annotated[int, typer.Option(help="MinHash permutations.")] = 128,
    bands: Annotated[int, typer.Option(help="LSH bands.")] = 16,
    rows: Annotated[int, typer.Option(help="Rows per LSH band (bands x rows <= num_perm).")] = 8,
    threshold: Annotated[float, typer.Option(help="Minimum estimated Jaccard similarity of a near-duplicate.")] = 0.8,
    workers: WorkersOption = None,
    chunk_mb: ChunkOption = DEFAULT_CHUNK_MB,
    ray_address: RayOption = None,
) -> None:
    """Remove exact duplicates (normalised text hash) and near-duplicates (MinHash LSH over word n-grams),
    keeping the first document of each cluster. The output holds the kept shards (same names), clusters.jsonl.zst
    (every cluster: the document kept, the ones dropped) and a manifest with counts per pile_set_name.

    Example: neox dedup work/download/<key> --work-root work
    """
    from neox.data.dedup import DedupConfig, dedup_shards
    from neox.pipeline.configfile import parse

    cfg = parse(DedupConfig, dict(ngram=ngram, num_perm=num_perm, bands=bands, rows=rows, threshold=threshold))
    result = dedup_shards(
        input_dir, work_root, cfg, workers=workers, ray_address=ray_address, chunk_bytes=chunk_mb << 20
    )
    report_rejects(result.path)
    typer.echo(str(result.path))


@app.command(
    "train-tokenizer",
    rich_help_panel=DATA,
    short_help="Train a BPE tokenizer, or adopt a tokenizer.json.",
)
def train_tokenizer(
    input_dir: Annotated[Path | None, typer.Argument(help="Shards to train on (omit with --from).")] = None,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size, special tokens included.")] = 50277,
    from_: Annotated[
        str | None, typer.Option("--from", help="Use an existing tokenizer.json (path or URL) instead of training.")
    ] = None,
    work_root: WorkRootOption = Path("work"),
) -> None:
    """Train a byte-level BPE like GPT-NeoX-20B's (<|endoftext|>, <|padding|>), or adopt an existing
    tokenizer.json such as 20B_tokenizer.json. Prints the tokenizer's path.

    Example: neox train-tokenizer work/dedup/<key> --vocab-size 8192
    """
    from neox.data.tokenizer import tokenizer_stage
    from neox.pipeline.layout import TOKENIZER_FILE

    result = tokenizer_stage(work_root, vocab_size, input_dir=input_dir, source=from_)
    typer.echo(str(result.path / TOKENIZER_FILE))


@app.command(rich_help_panel=DATA, short_help="Tokenize shards into a Megatron .bin/.idx dataset.")
def tokenize(
    input_dir: Annotated[Path, typer.Argument(help="Directory of Pile-format shards.")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer.json to encode with.")],
    prefix: Annotated[str, typer.Option(help="Output name: PREFIX_text_document.{bin,idx}.")] = "corpus",
    work_root: WorkRootOption = Path("work"),
    workers: WorkersOption = None,
    chunk_mb: ChunkOption = DEFAULT_CHUNK_MB,
    ray_address: RayOption = None,
) -> None:
    """Tokenize shards into a GPT-NeoX/Megatron mmap indexed dataset (.bin/.idx), byte-compatible with
    gpt-neox's preprocess_data.py --append-eod. Prints the stage output directory.

    Example: neox tokenize work/dedup/<key> --tokenizer work/tokenizer/<key>/tokenizer.json
    """
    from neox.data.tokenize import TokenizeConfig, tokenize_shards
    from neox.pipeline.configfile import parse

    out = tokenize_shards(
        input_dir,
        tokenizer,
        work_root,
        parse(TokenizeConfig, {"prefix": prefix}),
        workers=workers,
        ray_address=ray_address,
        chunk_bytes=chunk_mb << 20,
    ).path
    report_rejects(out)
    typer.echo(str(out))


def report_rejects(output: Path) -> None:
    """The lines a stage rejected, on the console as well as in its manifest and rejects.jsonl."""
    from neox.data.jsonl import rejects_summary
    from neox.pipeline.stage import read_manifest

    if rejects := read_manifest(output)["stats"].get("rejects"):
        typer.echo(f"{rejects_summary(rejects)}; see {output / 'rejects.jsonl'}", err=True)


@app.command(rich_help_panel=DATA, short_help="Tokenize chat JSONL for fine-tuning, prompts masked.")
def instructions(
    sources: Annotated[
        list[Path], typer.Argument(help="JSONL files (or folders of them): prompt/response or messages.")
    ],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer.json of the model to fine-tune (its checkpoint's).")],
    chat_template: Annotated[
        Path | None, typer.Option(help="Jinja chat template (default: configs/chat/default.jinja).")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Output names: PREFIX_text_document and PREFIX_text_label_document.")] = (
        "instructions"
    ),
    mask_prompt: Annotated[bool, typer.Option(help="Score only the assistant turns.")] = True,
    work_root: WorkRootOption = Path("work"),
) -> None:
    """Render instruction data with a chat template and tokenize it into a text dataset and a label dataset (-100
    on the prompt tokens), as gpt-neox's preprocess_data_with_chat_template.py stores them; train.data takes the
    output. Bad lines go to rejects.jsonl with their reason, counted on stderr. Prints the stage output directory.

    Example: neox instructions chats.jsonl --tokenizer work/import/<key>/tokenizer.json
    """
    from neox.data.instructions import InstructionsConfig, instructions_stage
    from neox.pipeline.configfile import parse
    from neox.pipeline.stage import read_manifest

    raw = {"sources": [str(s) for s in sources], "prefix": prefix, "mask_prompt": mask_prompt}
    if chat_template is not None:
        raw["chat_template"] = str(chat_template)
    out = instructions_stage(parse(InstructionsConfig, raw), tokenizer, work_root).path
    stats = read_manifest(out)["stats"]
    rejected = sum(stats["rejects"].values())
    typer.echo(
        f"{stats['documents']} examples, {stats['tokens']} tokens of which {stats['scored_tokens']} scored; "
        + (
            f"{rejected} lines rejected {stats['rejects']}, see {out / 'rejects.jsonl'}"
            if rejected
            else "none rejected"
        ),
        err=True,
    )
    typer.echo(str(out))


@app.command("data", rich_help_panel=DATA, short_help="Run a config's data stages, download to tokenize.")
def data_command(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML with a `data:` section.")],
) -> None:
    """Run the data stages a pipeline config describes (corpus -> download -> dedup -> tokenizer -> tokenize);
    finished stages are reused. Prints the tokenized dataset's directory.

    Example: neox data configs/pipeline/local.yaml
    """
    from neox.pipeline.commands import prepare_data_from_config

    typer.echo(str(prepare_data_from_config(config)))
