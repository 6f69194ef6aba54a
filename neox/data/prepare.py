"""The data stages in order, from a pipeline config's `data:` section: corpus -> download -> dedup ->
tokenizer -> tokenize. Each stage is content-addressed, so a rerun reuses what is finished.

    data:
      corpus: sample          # the embedded corpus, built into <work_root>/mirror and fetched over file://
      sample_shards: 4
      # sources: [https://host/pile/val.jsonl.zst, s3://bucket/shards/00.jsonl.zst]   (instead of corpus)
      # pile_mirror: https://your-mirror/pile                                         (or the Pile catalog)
      dedup: {ngram: 5, num_perm: 128, bands: 16, rows: 8, threshold: 0.8}
      tokenizer: {vocab_size: 8192}     # or {from: path/or/url/to/tokenizer.json}
      tokenize: {prefix: corpus}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict

from neox.data.chunks import DEFAULT_CHUNK_MB
from neox.data.dedup import DedupConfig, dedup_shards
from neox.data.download import Source, default_name, download_sources, sources_for
from neox.data.jsonl import not_a_shard
from neox.data.sample import build_sample_corpus
from neox.data.tokenize import TokenizeConfig, tokenize_shards
from neox.data.tokenizer import DEFAULT_VOCAB_SIZE, MIN_VOCAB_SIZE, tokenizer_stage
from neox.pipeline.configfile import Positive, Str, parse, section
from neox.pipeline.layout import TOKENIZER_FILE
from neox.pipeline.stage import StageResult
from neox.runtime.retry import Retry

# A tokenizer larger than this is a typo: tokenizers allocates memory by it (10^9 aborts the process).
MAX_VOCAB_SIZE = 1 << 20


@section
class TokenizerConfig:
    """`data.tokenizer`: train a byte-level BPE like GPT-NeoX-20B's on the deduplicated shards, or take one."""

    vocab_size: Annotated[int, Strict(), Field(ge=MIN_VOCAB_SIZE, le=MAX_VOCAB_SIZE)] | None = None
    """Vocabulary size of the BPE to train, special tokens included (50277 when neither key is given)."""
    source: Str | None = Field(default=None, alias="from")
    """An existing tokenizer.json (path or URL, e.g. EleutherAI's 20B_tokenizer.json) instead of training one."""

    def __post_init__(self) -> None:
        if self.vocab_size is not None and self.source is not None:
            raise ValueError("give vocab_size (train a tokenizer) or from (take one), not both")


@section
class DataConfig:
    """`data:`: where the raw shards come from, and the dedup, tokenizer and tokenize stages."""

    corpus: Literal["sample"] | None = None
    """`sample`: the embedded corpus (Python's stdlib sources and pydoc topics), fetched over file://."""
    sample_shards: Positive = 4
    """Shards the sample corpus is written as."""
    sources: tuple[Str, ...] = ()
    """Shard URLs (https://, http://, s3://, file://, a path, hf://datasets/...; append #sha256=HEX); a URL
    ending in / stands for every shard in that folder at run time."""
    valid_sources: tuple[Str, ...] = ()
    """Validation shards (URLs as in sources; gpt-neox's valid_data_paths): training reports its validation loss
    on them, and dedup removes their documents from the training shards. Given, they replace train.split."""
    test_sources: tuple[Str, ...] = ()
    """Held-out test shards (gpt-neox's test_data_paths): the eval-data stage builds from them, and dedup removes
    their documents from the training shards."""
    pile_mirror: Str | None = None
    """Base URL of a Pile mirror: its train 00-29 shards train, val validates, test is held out."""
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    workers: Positive | None = None
    """Tasks the dedup and tokenize stages run at once, a core each (default: every CPU Ray has)."""
    chunk_mb: Positive = DEFAULT_CHUNK_MB
    """Megabytes of (decompressed) text one dedup or tokenize task reads: a bigger shard is several tasks. The
    output does not depend on it."""
    ray_address: Str | None = None
    """Ray cluster for the dedup and tokenize tasks (default: RAY_ADDRESS, else a local Ray)."""
    download: Retry = Retry()

    def __post_init__(self) -> None:
        if self.corpus is not None and (self.sources or self.pile_mirror):
            raise ValueError("corpus: sample replaces sources and pile_mirror: give one kind of input")
        if self.corpus is None and not self.sources and not self.pile_mirror:
            raise ValueError("the data section names no input: set corpus: sample, sources: [...] or pile_mirror")
        for key in ("sources", "valid_sources", "test_sources"):
            for url in getattr(self, key):
                base = url.partition("#")[0]
                if not base.endswith("/") and (reason := not_a_shard(default_name(base))):
                    raise ValueError(f"{key}: {url}: {reason}")


def data_config(section: dict[str, Any] | DataConfig) -> DataConfig:
    """The typed data section (a mapping from a pipeline config is checked here, every key by its path)."""
    return section if isinstance(section, DataConfig) else parse(DataConfig, section, "data")


def data_sources(data: DataConfig, work_root: Path) -> list[Source]:
    held_out = sources_for([], None, list(data.valid_sources), list(data.test_sources), data.download)
    if data.corpus == "sample":
        return [
            Source(p.resolve().as_uri()) for p in build_sample_corpus(work_root / "mirror", data.sample_shards)
        ] + held_out
    return sources_for(list(data.sources), data.pile_mirror, retry=data.download) + held_out


def download_stage(data: DataConfig, work_root: str | Path) -> StageResult:
    return download_sources(data_sources(data, Path(work_root)), work_root, retry=data.download)


def scale_out(data: DataConfig) -> dict[str, Any]:
    """How the dedup and tokenize stages spread their tasks (none of it changes their output)."""
    return {"workers": data.workers, "ray_address": data.ray_address, "chunk_bytes": data.chunk_mb << 20}


def dedup_stage(downloaded: str | Path, data: DataConfig, work_root: str | Path) -> StageResult:
    return dedup_shards(downloaded, work_root, data.dedup, **scale_out(data))


def tokenizer_from_section(deduped: str | Path, data: DataConfig, work_root: str | Path) -> StageResult:
    """Train a BPE on the deduplicated shards, or take the one `tokenizer.from` names."""
    tok = data.tokenizer
    if tok.source is not None:
        return tokenizer_stage(work_root, DEFAULT_VOCAB_SIZE, source=tok.source)
    return tokenizer_stage(work_root, tok.vocab_size or DEFAULT_VOCAB_SIZE, input_dir=deduped)


def tokenize_stage(deduped: str | Path, tokenizer: str | Path, data: DataConfig, work_root: str | Path) -> StageResult:
    """Tokenize the deduplicated shards with the tokenizer stage's output (its folder)."""
    tokenizer_file = Path(tokenizer) / TOKENIZER_FILE
    return tokenize_shards(deduped, tokenizer_file, work_root, data.tokenize, **scale_out(data))


def upstream_outputs(tokenized: str | Path, work_root: str | Path) -> dict[str, Path]:
    """The dedup and download stage outputs a tokenized dataset was made from, those still under `work_root`
    (none for fine-tuning data, read from its sources directly)."""
    from neox.pipeline.stage import MANIFEST, read_manifest, stage_output

    found, current = {}, Path(tokenized)
    for stage in ("dedup", "download"):
        shards = read_manifest(current)["inputs"].get("shards")
        if shards is None:
            break
        current = stage_output(work_root, stage, shards)
        if not (current / MANIFEST).exists():
            break
        found[stage] = current
    return found


def prepare_data(section: dict[str, Any] | DataConfig, work_root: str | Path) -> Path:
    """Run (or reuse) every data stage; returns the tokenize stage's output directory."""
    data = data_config(section)
    downloaded = download_stage(data, work_root).path
    deduped = dedup_stage(downloaded, data, work_root).path
    return tokenize_stage(deduped, tokenizer_from_section(deduped, data, work_root).path, data, work_root).path
