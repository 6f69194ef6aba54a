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
from typing import Any

from neox.data.dedup import DedupConfig, dedup_shards
from neox.data.download import Source, download_sources, sources_for
from neox.data.sample import build_sample_corpus
from neox.data.tokenize import TokenizeConfig, tokenize_shards
from neox.data.tokenizer import tokenizer_stage
from neox.errors import ConfigError
from neox.pipeline.configfile import check_type

KEYS = {"corpus", "sample_shards", "sources", "pile_mirror", "dedup", "tokenizer", "tokenize", "workers", "ray_address"}


def data_sources(section: dict[str, Any], work_root: Path) -> list[Source]:
    if section.get("corpus") == "sample":
        shards = build_sample_corpus(
            work_root / "mirror", shards=check_type("data.sample_shards", section.get("sample_shards", 4), "int")
        )
        return [Source(p.resolve().as_uri()) for p in shards]
    if section.get("corpus") is not None:
        raise ConfigError(
            f"data.corpus must be 'sample' (or use data.sources / data.pile_mirror), got {section['corpus']!r}"
        )
    sources = sources_for(list(section.get("sources") or []), section.get("pile_mirror"))
    if not sources:
        raise ConfigError("the data section names no input: set corpus: sample, sources: [...] or pile_mirror")
    return sources


def check_section(section: dict[str, Any]) -> None:
    unknown = sorted(set(section) - KEYS)
    if unknown:
        raise ConfigError(f"unknown data config key(s): {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})")


def download_stage(section: dict[str, Any], work_root: str | Path) -> Path:
    return download_sources(data_sources(section, Path(work_root)), work_root)


def dedup_stage(downloaded: str | Path, section: dict[str, Any], work_root: str | Path) -> Path:
    try:
        cfg = DedupConfig(**(section.get("dedup") or {}))
    except TypeError as err:
        raise ConfigError(f"data.dedup: {err}") from None
    return dedup_shards(
        downloaded, work_root, cfg, workers=section.get("workers"), ray_address=section.get("ray_address")
    )


def tokenizer_from_section(deduped: str | Path, section: dict[str, Any], work_root: str | Path) -> Path:
    """Train a BPE on the deduplicated shards, or take the one `tokenizer.from` names."""
    tok = section.get("tokenizer") or {"vocab_size": 50277}
    if not isinstance(tok, dict):
        raise ConfigError(f"data.tokenizer is a mapping ({{vocab_size: N}} or {{from: PATH}}), got {tok!r}")
    return tokenizer_stage(
        work_root,
        check_type("data.tokenizer.vocab_size", tok.get("vocab_size", 50277), "int"),
        input_dir=None if "from" in tok else deduped,
        source=tok.get("from"),
    )


def tokenize_stage(deduped: str | Path, tokenizer: str | Path, section: dict[str, Any], work_root: str | Path) -> Path:
    try:
        cfg = TokenizeConfig(**(section.get("tokenize") or {}))
    except TypeError as err:
        raise ConfigError(f"data.tokenize: {err}") from None
    return tokenize_shards(
        deduped, tokenizer, work_root, cfg, workers=section.get("workers"), ray_address=section.get("ray_address")
    )


def upstream_outputs(tokenized: str | Path, work_root: str | Path) -> dict[str, Path]:
    """The dedup and download stage outputs a tokenized dataset was made from, those still under `work_root`."""
    from neox.pipeline.stage import MANIFEST, read_manifest, stage_output

    found, current = {}, Path(tokenized)
    for stage in ("dedup", "download"):
        current = stage_output(work_root, stage, read_manifest(current)["inputs"]["shards"])
        if not (current / MANIFEST).exists():
            break
        found[stage] = current
    return found


def prepare_data(section: dict[str, Any], work_root: str | Path) -> Path:
    """Run (or reuse) every data stage; returns the tokenize stage's output directory."""
    check_section(section)
    downloaded = download_stage(section, work_root)
    deduped = dedup_stage(downloaded, section, work_root)
    return tokenize_stage(deduped, tokenizer_from_section(deduped, section, work_root), section, work_root)
