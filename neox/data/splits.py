"""Named splits (gpt-neox's train/valid/test data paths): which shards of a stage output are validation and test
data. The download stage writes `splits.json` beside the shards when sources say so (the Pile's catalog does:
`val` validates, `test` is held out); dedup carries it over, deduplicating held-out shards first so that a
document found in both keeps its held-out copy and loses the training one (decontamination); tokenize writes one
dataset per split; training validates on `valid` and the eval-data stage reads `test`. A folder without the file
is all training data, cut by the positional `split` as before.

    splits.json: {"valid": ["val.jsonl.zst"], "test": ["test.jsonl.zst"]}   # every other shard trains
"""

from __future__ import annotations

import json
from pathlib import Path

from neox.data.jsonl import list_shards
from neox.errors import DataError

SPLITS = ("train", "valid", "test")
HELD_OUT = ("test", "valid")  # deduplicated first, in this order: their copy of a duplicate is the one kept
SPLITS_FILE = "splits.json"


def read_splits(folder: str | Path) -> dict[str, str]:
    """Shard name -> split for the held-out shards a folder's splits.json names (empty without the file); each must
    be a shard of the folder."""
    path = Path(folder) / SPLITS_FILE
    if not path.exists():
        return {}
    try:
        listed = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(listed, dict) or not set(listed) <= set(HELD_OUT):
        raise DataError(f"{path} must map 'valid' and/or 'test' to lists of shard names, got {listed!r}")
    names = {}
    for split, shards in listed.items():
        if not isinstance(shards, list) or not all(isinstance(name, str) and "/" not in name for name in shards):
            raise DataError(f"{path}: {split!r} must be a list of shard file names")
        for name in shards:
            if names.setdefault(name, split) != split:
                raise DataError(f"{path}: {name} is listed as both {names[name]} and {split}")
    missing = sorted(set(names) - {shard.name for shard in list_shards(folder)})
    if missing:
        raise DataError(f"{path} names shards that are not in {folder}: {', '.join(missing)}")
    return names


def write_splits(folder: str | Path, held_out: dict[str, str]) -> None:
    """Write splits.json for these held-out shards (shard name -> split), if there are any."""
    if held_out:
        listed = {split: sorted(n for n, s in held_out.items() if s == split) for split in HELD_OUT}
        (Path(folder) / SPLITS_FILE).write_text(json.dumps({k: v for k, v in listed.items() if v}, indent=1) + "\n")


def split_of(shard: Path, held_out: dict[str, str]) -> str:
    return held_out.get(shard.name, "train")


def held_out_first(shards: list[Path], held_out: dict[str, str]) -> list[Path]:
    """The shards in dedup's order: test, then valid, then training shards, by name within each."""
    rank = {split: i for i, split in enumerate([*HELD_OUT, "train"])}
    return sorted(shards, key=lambda s: (rank[split_of(s, held_out)], s.name))
