"""The dedup stage: exact and near-duplicate removal over Pile-format shards, scaled out on Ray tasks.

- Exact: sha256 of the NFC-normalised, whitespace-collapsed text.
- Near: MinHash (rensa, bulk) over lower-cased word n-gram shingles; LSH banding proposes candidate pairs
  (bands x rows; the defaults, 16 x 8 of 128 permutations, catch pairs at Jaccard 0.8 with ~95% and 0.85 with
  ~99% probability per pair); a candidate is a duplicate only if its signature-estimated Jaccard reaches
  `threshold`. Clusters are the connected components of the duplicates and keep their first document in
  shard/line order.

How it runs, so that no process holds what grows with the corpus (the driver holds what grows with its
duplicates):
1. sign: a Ray task per chunk of a shard (`chunks.py`) writes the chunk's signatures, document ids
   (shard index << 40 | line), sets and paths into the stage's scratch folder, with one row per document and
   key (each band's values, and the exact hash) sorted by a 32-bit hash of the key.
2. pair: that hash range is cut into partitions sized by the number of rows, a Ray task each. A partition
   gathers its rows from every chunk, groups equal keys and pairs each document of a group with the group's
   first: exact pairs are duplicates as they are, band pairs when their signatures (read back from the chunks'
   files) agree on at least `threshold` of their values.
3. cluster (driver): connected components over the duplicate pairs only.
4. write: a Ray task per shard copies the shard's documents but the dropped ones, byte for byte, in one zstd
   stream; `clusters.jsonl.zst` lists every cluster with its documents' set and path.

Every decision depends only on the documents and their order, so the output is the same for any worker count,
chunk size and partition count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import shutil
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import ray
from pydantic import Field, Strict
from rensa import RMinHash
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neox.data.chunks import DEFAULT_CHUNK_MB, Chunk, map_chunks, read_chunk
from neox.data.jsonl import Rejects, list_shards, merge_rejects, read_lines, write_lines, write_shard
from neox.data.splits import held_out_first, read_splits, split_of, write_splits
from neox.errors import DataError
from neox.pipeline.configfile import NonNegative, Positive, section
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, run_stage
from neox.runtime.ray_cluster import ensure_ray, run_ordered

STAGE = "dedup"
CODE_VERSION = "2"  # 2: clusters in clusters.jsonl.zst, not in the manifest; lone surrogates are rejects; splits

LINE_BITS = 40  # a document id is shard index << LINE_BITS | line number
LINE_MASK = (1 << LINE_BITS) - 1
SIGN_BATCH = 2000  # documents shingled and signed at once: bounds a task's memory whatever the chunk size
ROWS_PER_PARTITION = 4_000_000  # key rows a pair task sorts at once (~200 MB)
CONFIRM_BATCH = 100_000  # candidate pairs whose signatures are compared at once (~100 MB)
EXACT = 0  # the `band` of an exact-hash row; LSH bands are 1..bands


@section
class DedupConfig:
    """`data.dedup`: exact duplicates by normalised text, near duplicates by MinHash LSH over word n-grams."""

    ngram: Positive = 5
    """Words per shingle."""
    num_perm: Positive = 128
    """MinHash permutations."""
    bands: Positive = 16
    """LSH bands."""
    rows: Positive = 8
    """Rows per LSH band (bands x rows <= num_perm)."""
    threshold: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.8
    """Minimum estimated Jaccard similarity of a near duplicate, in (0, 1]."""
    seed: NonNegative = 1
    """Seed of the MinHash permutations."""

    def __post_init__(self) -> None:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) exceeds num_perm ({self.num_perm})")


def normalize(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, no leading/trailing space."""
    if not unicodedata.is_normalized("NFC", text):  # a cheap check; most text already is
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def shingles(normalized: str, n: int) -> list[str]:
    """Lower-cased word n-grams of normalized text; a document shorter than n words is one shingle."""
    words = normalized.lower().split(" ")
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(gram) for gram in zip(*(words[i:] for i in range(n)), strict=False)]


def key_width(cfg: DedupConfig) -> int:
    """uint64 words of a key row: a band's values (rows x 4 bytes) or the 16-byte exact hash, zero-padded."""
    return max(2, math.ceil(cfg.rows / 2))


def row_dtype(cfg: DedupConfig) -> np.dtype:
    return np.dtype([("band", "<u2"), ("doc", "<u8"), ("key", "<u8", (key_width(cfg),))])


def key_rows(
    ids: np.ndarray, exact: np.ndarray, signatures: np.ndarray, cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One row per document and key (the exact hash, then each band's values) and the key's 32-bit hash, both
    sorted by the hash."""
    n, width = len(ids), key_width(cfg)
    rows = np.zeros(n * (cfg.bands + 1), dtype=row_dtype(cfg))
    rows["doc"] = np.tile(ids, cfg.bands + 1)
    rows["band"] = np.repeat(np.arange(cfg.bands + 1, dtype=np.uint16), n)
    keys = np.zeros((cfg.bands + 1, n, width * 2), dtype=np.uint32)
    keys[EXACT, :, :4] = exact.view(np.uint32).reshape(n, 4)
    for band in range(cfg.bands):
        keys[band + 1, :, : cfg.rows] = signatures[:, band * cfg.rows : (band + 1) * cfg.rows]
    rows["key"] = keys.reshape(-1, width * 2).view(np.uint64)
    # a multiply-xorshift mix of the key words and the band: it only spreads rows over partitions, equal keys
    # always get equal hashes
    mixed = rows["band"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for word in range(width):
        mixed = (mixed ^ rows["key"][:, word]) * np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(29)
    hashes = (mixed >> np.uint64(32)).astype(np.uint32)
    order = np.argsort(hashes, kind="stable")
    return rows[order], hashes[order]


def sign_chunk(chunk: Chunk, cfg: DedupConfig, scratch: Path) -> dict[str, Any]:
    """Sign one chunk's documents into `scratch/<chunk label>.*`; return its counts."""
    rejects = Rejects(scratch / f"{chunk.label}.rejects.jsonl")
    docs = read_chunk(chunk, rejects)
    ids, sets, paths, exact, blocks, size = [], [], [], [], [], 0
    while batch := list(itertools.islice(docs, SIGN_BATCH)):
        shingle_sets = []
        for doc in batch:
            ids.append(chunk.shard_index << LINE_BITS | doc.line)
            sets.append(doc.set_name)
            paths.append(doc.meta.get("path"))
            normalized = normalize(doc.text)
            exact.append(hashlib.sha256(normalized.encode()).digest()[:16])
            shingle_sets.append(shingles(normalized, cfg.ngram))
            size += len(doc.text.encode())
        signed = RMinHash.digest_matrix_from_token_sets(shingle_sets, cfg.num_perm, cfg.seed).to_rows()
        blocks.append(np.array(signed, dtype=np.uint32))  # rensa's Python ints, dropped per batch
    rejects.close()
    signatures = np.concatenate(blocks) if blocks else np.zeros((0, cfg.num_perm), dtype=np.uint32)
    ids_array = np.array(ids, dtype=np.uint64)
    exact_array = np.frombuffer(b"".join(exact), dtype=np.uint8).reshape(-1, 16)
    np.save(scratch / f"{chunk.label}.ids.npy", ids_array)
    np.save(scratch / f"{chunk.label}.sig.npy", signatures)
    rows, hashes = key_rows(ids_array, exact_array, signatures, cfg)
    np.save(scratch / f"{chunk.label}.rows.npy", rows)
    # apart from the rows, contiguous: a pair task binary-searches them in place, touching a few pages of the file
    np.save(scratch / f"{chunk.label}.hash.npy", hashes)
    (scratch / f"{chunk.label}.meta.json").write_text(json.dumps({"sets": sets, "paths": paths}))
    return {"documents": len(ids), "bytes": size, "sets": dict(Counter(sets)), "reject_counts": rejects.counts}


def pair_partition(
    low: int, high: int, labels: list[str], first_ids: np.ndarray, scratch: Path, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The duplicate pairs (first, other) among key rows whose hash is in [low, high): exact ones, and near ones
    whose signatures agree on at least `threshold` of their values."""
    parts = []
    low_, last = np.uint32(low), np.uint32(high - 1)  # as the file's dtype, so the search reads it in place
    for label in labels:
        hashes = np.load(scratch / f"{label}.hash.npy", mmap_mode="r")
        start, end = np.searchsorted(hashes, low_, side="left"), np.searchsorted(hashes, last, side="right")
        rows = np.load(scratch / f"{label}.rows.npy", mmap_mode="r")
        if end > start:
            parts.append(np.array(rows[start:end]))
    empty = np.zeros((0, 2), dtype=np.uint64)
    if not parts:
        return empty, empty
    rows = np.concatenate(parts)
    key = rows["key"]
    # sorted by band, key, then document: each group of equal keys starts with its first document
    rows = rows[np.lexsort((rows["doc"], *(key[:, w] for w in reversed(range(key.shape[1]))), rows["band"]))]
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = (rows["band"][1:] != rows["band"][:-1]) | (rows["key"][1:] != rows["key"][:-1]).any(axis=1)
    first = rows["doc"][starts][np.cumsum(starts) - 1]
    later = ~starts
    pairs = np.stack([first[later], rows["doc"][later]], axis=1)
    is_exact = rows["band"][later] == EXACT
    candidates = np.unique(pairs[~is_exact], axis=0)
    agree = np.zeros(len(candidates), dtype=bool)
    for start in range(0, len(candidates), CONFIRM_BATCH):  # memory: the signatures of one batch's documents
        batch = candidates[start : start + CONFIRM_BATCH]
        docs = np.unique(batch)
        signatures = read_signatures(docs, labels, first_ids, scratch)
        first, other = signatures[np.searchsorted(docs, batch[:, 0])], signatures[np.searchsorted(docs, batch[:, 1])]
        agree[start : start + CONFIRM_BATCH] = (first == other).mean(axis=1) >= threshold
    return pairs[is_exact], candidates[agree]


def by_chunk(docs: np.ndarray, first_ids: np.ndarray) -> Iterator[tuple[int, slice]]:
    """(chunk index, slice of `docs`) for each chunk holding some of these sorted documents."""
    if not len(docs):
        return
    owner = np.searchsorted(first_ids, docs, side="right") - 1
    chunks, starts = np.unique(owner, return_index=True)
    for chunk, start, end in zip(chunks.tolist(), starts.tolist(), [*starts[1:].tolist(), len(docs)], strict=True):
        yield chunk, slice(start, end)


def read_signatures(docs: np.ndarray, labels: list[str], first_ids: np.ndarray, scratch: Path) -> np.ndarray:
    """The signatures of the given (sorted) documents, in their order, read from their chunks' files."""
    found = np.zeros((len(docs), 0), dtype=np.uint32)
    for chunk, part in by_chunk(docs, first_ids):
        ids = np.load(scratch / f"{labels[chunk]}.ids.npy", mmap_mode="r")
        signatures = np.load(scratch / f"{labels[chunk]}.sig.npy", mmap_mode="r")
        if found.shape[1] != signatures.shape[1]:
            found = np.zeros((len(docs), signatures.shape[1]), dtype=np.uint32)
        found[part] = signatures[np.searchsorted(ids, docs[part])]
    return found


def components(exact: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The documents of every cluster (connected component of the duplicate pairs) and each one's root, its
    cluster's first document; documents in no pair are in no cluster."""
    pairs = np.concatenate([exact, near])
    nodes, index = np.unique(pairs.ravel(), return_inverse=True)
    graph = coo_matrix((np.ones(len(pairs)), (index[0::2], index[1::2])), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # nodes are sorted: a label's first node is its smallest
    return nodes, nodes[first[labels]]


def describe_documents(label: str, scratch: Path, docs: np.ndarray) -> tuple[list[str], dict[int, str]]:
    """The given documents' sets (in their order) and the paths of those that have one, from their chunk's files."""
    ids = np.load(scratch / f"{label}.ids.npy")
    meta = json.loads((scratch / f"{label}.meta.json").read_text())
    rows = np.searchsorted(ids, docs).tolist()
    paths = {i: meta["paths"][row] for i, row in enumerate(rows) if meta["paths"][row]}
    return [meta["sets"][row] for row in rows], paths


def write_kept(shard: Path, out: Path, id_files: list[Path], dropped_lines: np.ndarray) -> int:
    """Copy the shard's documents but the dropped ones, byte for byte (they were parsed and checked when signed)."""
    lines = [line_numbers(np.load(f)) for f in id_files]
    keep = iter(np.setdiff1d(np.concatenate(lines) if lines else [], dropped_lines).tolist())
    wanted = next(keep, None)

    def kept():
        nonlocal wanted
        for number, line in enumerate(read_lines(shard), start=1):
            if number == wanted:
                yield line
                wanted = next(keep, None)

    return write_lines(out, kept())


def dedup_shards(
    input_dir: str | Path,
    work_root: str | Path,
    cfg: DedupConfig = DedupConfig(),
    workers: int | None = None,
    ray_address: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_MB << 20,
) -> StageResult:
    """Run (or reuse) the dedup stage; its output is a folder of deduplicated shards (the input's names) with
    clusters.jsonl.zst. `workers` caps the tasks run at once, `chunk_bytes` the text one signing task reads; neither
    changes the output."""
    held_out = read_splits(input_dir)
    shards = held_out_first(list_shards(input_dir), held_out)  # a held-out copy of a duplicate is the one kept

    def body(run: StageRun) -> None:
        ensure_ray(ray_address)
        write_splits(run.tmp, held_out)
        scratch = run.tmp / ".scratch"
        scratch.mkdir()
        (scratch / "chunks").mkdir()
        signer = ray.remote(num_cpus=1)(sign_chunk)
        chunks, signed = map_chunks(
            shards, chunk_bytes, scratch / "chunks", signer, lambda c: (cfg, scratch), workers, "dedup: sign"
        )
        documents = sum(r["documents"] for r in signed)
        if documents == 0:
            raise DataError(f"no documents in {input_dir}: every line was empty or rejected")
        exact, near = find_duplicates(chunks, scratch, cfg, documents, workers)
        nodes, roots = components(exact, near)
        is_dropped = roots != nodes  # a cluster keeps its root, its first document
        dropped = nodes[is_dropped]
        written = write_documents(shards, chunks, scratch, run.tmp, dropped, workers)
        if written != documents - len(dropped):  # the shards changed between signing and writing
            raise DataError(f"wrote {written} documents, expected {documents - len(dropped)}; was the input modified?")
        sets_in = sum((Counter(r["sets"]) for r in signed), Counter())
        dropped_sets = write_clusters(chunks, scratch, nodes, roots, run.tmp / "clusters.jsonl.zst", workers)
        reject_counts = merge_rejects(
            [(scratch / f"{c.label}.rejects.jsonl", r["reject_counts"]) for c, r in zip(chunks, signed, strict=True)],
            run.tmp / "rejects.jsonl",
        )
        shutil.rmtree(scratch)
        exact_duplicates = len(np.unique(exact[:, 1]))
        run.stats.update(
            documents_in=documents,
            documents_out=documents - len(dropped),
            bytes_in=sum(r["bytes"] for r in signed),
            exact_duplicates=exact_duplicates,
            near_duplicates=len(dropped) - exact_duplicates,
            clusters=int(np.sum(~is_dropped)),
            largest_cluster=int(np.unique(roots, return_counts=True)[1].max()) if len(roots) else 0,
            rejects=reject_counts,
            per_set={name: {"in": n, "out": n - dropped_sets.get(name, 0)} for name, n in sorted(sets_in.items())},
            chunks=len(chunks),
            decontaminated=decontaminated(dropped, roots[is_dropped], shards, held_out),
        )

    inputs = {"shards": input_fingerprint(input_dir)}
    return run_stage(work_root, STAGE, CODE_VERSION, dataclasses.asdict(cfg), inputs, body)


def decontaminated(dropped: np.ndarray, their_roots: np.ndarray, shards: list[Path], held_out: dict[str, str]) -> int:
    """Training documents dropped because a validation or test document is their (near) duplicate."""
    held = np.array([split_of(shard, held_out) != "train" for shard in shards])
    return int(np.sum(~held[shard_indices(dropped)] & held[shard_indices(their_roots)]))


def shard_indices(docs: np.ndarray) -> np.ndarray:
    return (docs >> np.uint64(LINE_BITS)).astype(np.int64)


def line_numbers(docs: np.ndarray) -> np.ndarray:
    return docs & np.uint64(LINE_MASK)


def chunk_first_ids(chunks: list[Chunk]) -> np.ndarray:
    """The smallest document id each chunk can hold, ascending: where a document's chunk is looked up."""
    return np.array([c.shard_index << LINE_BITS | c.first_line for c in chunks], dtype=np.uint64)


def find_duplicates(
    chunks: list[Chunk], scratch: Path, cfg: DedupConfig, documents: int, workers: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The exact and the near duplicate pairs (first, other) of the signed chunks, paired by partition."""
    cores = workers or int(ray.available_resources().get("CPU", 1))
    partitions = max(cores, math.ceil(documents * (cfg.bands + 1) / ROWS_PER_PARTITION))
    bounds = [p * (1 << 32) // partitions for p in range(partitions + 1)]
    labels, first_ids = [c.label for c in chunks], chunk_first_ids(chunks)
    pairer = ray.remote(num_cpus=1)(pair_partition)
    calls = [(pairer, (lo, hi, labels, first_ids, scratch, cfg.threshold)) for lo, hi in itertools.pairwise(bounds)]
    # an exact copy is paired in every band too, and a pair found in several partitions comes back from each: keep
    # each pair once as results arrive, so the driver holds the distinct pairs, about one per duplicate
    exact, near = np.zeros((0, 2), dtype=np.uint64), np.zeros((0, 2), dtype=np.uint64)
    batch = cores * 8
    for start in range(0, len(calls), batch):
        found = run_ordered(
            calls[start : start + batch], workers, f"dedup: pair ({start}/{len(calls)} done)", "partition"
        )
        exact = np.unique(np.concatenate([exact, *(f[0] for f in found)]), axis=0)
        near = np.unique(np.concatenate([near, *(f[1] for f in found)]), axis=0)
    return exact, near


def write_documents(
    shards: list[Path], chunks: list[Chunk], scratch: Path, out: Path, dropped: np.ndarray, workers: int | None
) -> int:
    """Write every shard's kept documents under its own name in `out` (a shard left empty stays, empty); returns how
    many were written. `dropped` is sorted, so each shard's are one slice of it."""
    bounds = np.searchsorted(shard_indices(dropped), np.arange(len(shards) + 1))
    id_files: dict[int, list[Path]] = {}
    for c in chunks:
        id_files.setdefault(c.shard_index, []).append(scratch / f"{c.label}.ids.npy")
    writer = ray.remote(num_cpus=1)(write_kept)
    calls = [
        (writer, (shard, out / shard.name, id_files.get(i, []), line_numbers(dropped[bounds[i] : bounds[i + 1]])))
        for i, shard in enumerate(shards)
    ]
    return sum(run_ordered(calls, workers, "dedup: write", "shard"))


def write_clusters(
    chunks: list[Chunk], scratch: Path, nodes: np.ndarray, roots: np.ndarray, out: Path, workers: int | None
) -> Counter:
    """Write every cluster (its kept document, then the dropped ones, each with id, set and path) in order of
    its first document; return the dropped documents counted by set. Held per document: a set number, and the
    path of those that have one (the Pile's have none)."""
    describer = ray.remote(num_cpus=1)(describe_documents)
    wanted = list(by_chunk(nodes, chunk_first_ids(chunks)))
    calls = [(describer, (chunks[chunk].label, scratch, nodes[part])) for chunk, part in wanted]
    set_numbers: dict[str, int] = {}
    node_set = np.zeros(len(nodes), dtype=np.int32)
    paths: dict[int, str] = {}
    for (_, part), (sets, found) in zip(wanted, run_ordered(calls, workers, "dedup: clusters", "chunk"), strict=True):
        node_set[part] = [set_numbers.setdefault(name, len(set_numbers)) for name in sets]
        paths.update((part.start + i, path) for i, path in found.items())
    shard_name = {c.shard_index: c.shard.name for c in chunks}
    set_names = list(set_numbers)
    dropped_sets: Counter = Counter()

    def describe(i: int) -> dict[str, Any]:
        doc = int(nodes[i])
        entry = {"id": f"{shard_name[doc >> LINE_BITS]}:{doc & LINE_MASK}", "set": set_names[node_set[i]]}
        return entry | ({"path": paths[i]} if i in paths else {})

    def records() -> Iterator[dict[str, Any]]:
        order = np.lexsort((nodes, roots)).tolist()  # by cluster, each starting with its root (its smallest)
        for _, members in itertools.groupby(order, key=lambda i: int(roots[i])):
            kept, *dropped = members
            dropped_sets.update(set_names[node_set[i]] for i in dropped)
            yield {"kept": describe(kept), "dropped": [describe(i) for i in dropped]}

    write_shard(out, records())
    return dropped_sets
