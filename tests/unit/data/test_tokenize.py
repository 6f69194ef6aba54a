"""The tokenize stage: gpt-neox-compatible output, independent of worker count, rejects kept, nothing
partial published, finished work reused."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zstandard

from neox.data.indexed import IndexedDataset
from neox.data.jsonl import CorruptShardError, Rejects, list_shards, read_shard, write_shard
from neox.data.tokenize import TokenizeConfig, data_prefix, tokenize_shards
from neox.data.tokenizer import load_tokenizer
from neox.pipeline.stage import verify_output


def gpt_neox_reference(shards, tokenizer_file):
    """What preprocess_data.py --append-eod computes: per document `tokenizer.encode(text).ids + [eod]`,
    empty documents skipped, shards in the order given."""
    tok = load_tokenizer(tokenizer_file)
    eod = tok.token_to_id("<|endoftext|>")
    sequences = []
    for shard in shards:
        for doc in read_shard(shard, Rejects()):
            ids = tok.encode(doc.text).ids
            if ids:
                sequences.append(ids + [eod])
    return sequences


def test_output_equals_gpt_neox_preprocessing_whatever_the_worker_count(
    tmp_path, ray_local, small_corpus, corpus_tokenizer
):
    one = tokenize_shards(small_corpus, corpus_tokenizer, tmp_path / "w1", TokenizeConfig(batch_size=7), workers=1).path
    two = tokenize_shards(
        small_corpus, corpus_tokenizer, tmp_path / "w2", TokenizeConfig(batch_size=64), workers=2
    ).path
    for suffix in (".bin", ".idx"):
        assert open(f"{data_prefix(one)}{suffix}", "rb").read() == open(f"{data_prefix(two)}{suffix}", "rb").read()
    ds = IndexedDataset(data_prefix(one))
    expected = gpt_neox_reference(list_shards(small_corpus), corpus_tokenizer)
    assert len(ds) == len(expected)
    assert all(ds[i].tolist() == seq for i, seq in enumerate(expected))
    manifest = verify_output(one)
    assert manifest["stats"]["tokens"] == sum(map(len, expected)) == ds.num_tokens
    assert manifest["stats"]["dtype"] == "uint16" and manifest["stats"]["documents"] == 300
    assert manifest["stats"]["engine"] == "tiktoken"  # a plain byte-level BPE takes the fast path
    assert set(manifest["files"]) == {"corpus_text_document.bin", "corpus_text_document.idx", "tokenizer.json"}
    assert (one / "tokenizer.json").read_bytes() == corpus_tokenizer.read_bytes()


def test_bad_lines_are_counted_and_kept_with_their_location(tmp_path, ray_local, corpus_tokenizer):
    lines = [
        json.dumps({"text": "hello world"}),
        "{broken",
        json.dumps({"meta": {}}),
        json.dumps({"text": ""}),
        json.dumps({"text": "bye"}),
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode())
    )
    out = tokenize_shards(tmp_path / "in", corpus_tokenizer, tmp_path / "work").path
    stats = verify_output(out)["stats"]
    assert stats["documents"] == 3 and stats["sequences"] == 2 and stats["empty_documents"] == 1
    assert sum(stats["rejects"].values()) == 2
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["shard"], r["line"]) for r in rejects] == [("00.jsonl.zst", 2), ("00.jsonl.zst", 3)]


def test_a_corrupt_shard_fails_the_stage_and_publishes_nothing(tmp_path, ray_local, small_corpus, corpus_tokenizer):
    (tmp_path / "in").mkdir()
    for shard in list_shards(small_corpus):
        (tmp_path / "in" / shard.name).write_bytes(shard.read_bytes())
    data = (tmp_path / "in" / "01.jsonl.zst").read_bytes()
    (tmp_path / "in" / "01.jsonl.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShardError, match="01.jsonl.zst: truncated zstd stream"):
        tokenize_shards(tmp_path / "in", corpus_tokenizer, tmp_path / "work")
    assert os.listdir(tmp_path / "work" / "tokenize") == []  # no output, no temp directory left


def test_empty_input_is_a_clear_error(tmp_path, ray_local, corpus_tokenizer):
    (tmp_path / "in").mkdir()
    write_shard(tmp_path / "in" / "00.jsonl.zst", [{"no_text": 1}])
    with pytest.raises(ValueError, match="no documents"):
        tokenize_shards(tmp_path / "in", corpus_tokenizer, tmp_path / "work")
    assert os.listdir(tmp_path / "work" / "tokenize") == []


def test_finished_output_is_reused_and_damaged_output_redone(
    tmp_path, ray_local, small_corpus, corpus_tokenizer, capfd
):
    written = tokenize_shards(small_corpus, corpus_tokenizer, tmp_path / "work")
    first = written.path
    stamp = os.stat(first / "manifest.json").st_mtime_ns
    reused = tokenize_shards(small_corpus, corpus_tokenizer, tmp_path / "work")
    assert not written.reused and reused.reused and reused.path == first
    assert os.stat(first / "manifest.json").st_mtime_ns == stamp  # skipped, not rewritten
    with open(f"{data_prefix(first)}.bin", "r+b") as f:
        f.write(b"\xff\xff")
    redone = tokenize_shards(small_corpus, corpus_tokenizer, tmp_path / "work")
    again = redone.path
    assert not redone.reused and again == first and verify_output(again)  # redone and intact
    assert "does not match its manifest entry" in capfd.readouterr().err  # and said so on the console
    assert np.asarray(IndexedDataset(data_prefix(again))[0][:1]).tolist() != [65535]


def test_a_tokenizer_tiktoken_cannot_reproduce_runs_on_tokenizers(tmp_path, ray_local, small_corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<|padding|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [d.text for shard in list_shards(small_corpus) for d in read_shard(shard, Rejects())]
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|padding|>"])
    )
    tok.save(str(tmp_path / "words.json"))
    out = tokenize_shards(small_corpus, tmp_path / "words.json", tmp_path / "work").path
    assert verify_output(out)["stats"]["engine"] == "tokenizers"
    ds = IndexedDataset(data_prefix(out))
    expected = gpt_neox_reference(list_shards(small_corpus), tmp_path / "words.json")
    assert [ds[i].tolist() for i in range(len(ds))] == expected
