"""The tokenize stage: gpt-neox-compatible output, independent of worker count, rejects kept, nothing
partial published, finished work reused."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zstandard

from neox.data.fast_bpe import fast_encoder
from neox.data.indexed import IndexedDataset
from neox.data.jsonl import CorruptShardError, Rejects, list_shards, read_shard, write_lines, write_shard
from neox.data.tokenize import TokenizeConfig, data_prefix, safe_pieces, tokenize_shards
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


def test_output_equals_gpt_neox_preprocessing_whatever_the_worker_count_and_chunk_size(
    tmp_path, ray_local, small_corpus, corpus_tokenizer
):
    one = tokenize_shards(small_corpus, corpus_tokenizer, tmp_path / "w1", TokenizeConfig(batch_size=7), workers=1).path
    two = tokenize_shards(
        small_corpus, corpus_tokenizer, tmp_path / "w2", TokenizeConfig(batch_size=64), workers=2, chunk_bytes=30_000
    ).path
    for suffix in (".bin", ".idx"):
        assert open(f"{data_prefix(one)}{suffix}", "rb").read() == open(f"{data_prefix(two)}{suffix}", "rb").read()
    assert verify_output(one)["stats"]["chunks"] == 3 and verify_output(two)["stats"]["chunks"] >= 10
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


def test_input_with_every_line_rejected_is_a_clear_error_counting_them(tmp_path, ray_local, corpus_tokenizer):
    (tmp_path / "in").mkdir()
    write_shard(tmp_path / "in" / "00.jsonl.zst", [{"no_text": 1}])
    rejected = r"every line was empty or rejected \(1 lines rejected: no string 'text' field \(1\)\)"
    with pytest.raises(ValueError, match=rejected):
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


TRICKY = [
    "it's a cafe\u0301 na\u00efve  double  spaced words, it'll end'd x9 y",
    "tabs\tand\nnew lines\n\n  indented text here with ids 12345 67 and more words",
    "日本語の テキスト と English mixed together here and there again",
    "a" * 300 + " b" * 40 + " " + "c" * 120,  # long runs with and without a place to cut
    "1.5 2.25 -3 4e9\n10 20 30\n(x) [y] {z} 'q' \"r\"\n",  # a numeric table, punctuation
    "日本語のテキスト\n改行のある文章\n次の行 と 空白\t タブ\u3000全角空白",  # CJK: lines, tabs, ideographic space
    "e \u0301 combining after a space, a\u00a0no-break\x1cseparator  two spaces\n\n blank line",
]


@pytest.mark.parametrize("max_chars", [8, 33, 100])
def test_a_long_document_is_encoded_in_pieces_whose_ids_are_those_of_the_whole(
    max_chars, small_corpus, corpus_tokenizer
):
    tok = load_tokenizer(corpus_tokenizer)
    fast = fast_encoder(corpus_tokenizer.read_text())
    texts = TRICKY + [d.text for d in itertools.islice(read_shard(list_shards(small_corpus)[0], Rejects()), 30)]
    cut = 0
    for text in texts:
        pieces = list(safe_pieces(text, max_chars))
        assert "".join(pieces) == text
        cut += len(pieces) > 1
        whole = tok.encode(text).ids
        assert [i for piece in pieces for i in tok.encode(piece).ids] == whole
        assert [i for piece in pieces for i in fast(piece).tolist()] == whole
    assert cut >= 20


def test_a_50_mb_document_tokenizes_in_a_few_hundred_megabytes(tmp_path, corpus_tokenizer):
    """One document of 50 MB, through `tokenizers` (which needs ~5.8 GB for it whole): encoded in pieces. The peak is
    the process's own (VmHWM): getrusage's ru_maxrss survives exec, so it would report the test process's size."""
    script = f"""
import random
from pathlib import Path
from neox.data.chunks import plan_shard
from neox.data.jsonl import write_shard
from neox.data.tokenize import tokenize_chunk
rng = random.Random(0)
words = ["the", "pipeline", "tokenizes", "documents", "it's", "x9", "\\n\\n", "  ", "élan"]
write_shard("{tmp_path}/00.jsonl", [{{"text": " ".join(rng.choice(words) for _ in range(50_000_000 // 7))}}])
chunk = plan_shard(Path("{tmp_path}/00.jsonl"), 0, 1 << 30)[0]
stats = tokenize_chunk(chunk, Path("{corpus_tokenizer}").read_text(), Path("{tmp_path}/part"), 1000, fast=False)
peak_kb = next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]
print(stats["tokens"], int(peak_kb) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    tokens, peak_mb = map(int, done.stdout.split())
    assert tokens > 10_000_000 and peak_mb < 1024, (tokens, peak_mb)


def test_lone_surrogates_are_rejects_even_among_the_documents_the_engines_are_compared_on(
    tmp_path, ray_local, corpus_tokenizer
):
    lines = [json.dumps({"text": "plain text"}), json.dumps({"text": "lone \ud800 surrogate"})]
    lines += [json.dumps({"text": f"document {i}"}) for i in range(300)] + [json.dumps({"text": "late \udfff one"})]
    (tmp_path / "in").mkdir()
    write_lines(tmp_path / "in" / "00.jsonl", (line.encode() + b"\n" for line in lines))
    out = tokenize_shards(tmp_path / "in", corpus_tokenizer, tmp_path / "work").path
    stats = verify_output(out)["stats"]
    assert stats["documents"] == 301 and stats["engine"] == "tiktoken"
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [
        (2, "text is not valid Unicode"),
        (303, "text is not valid Unicode"),
    ]
