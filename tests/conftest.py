"""Shared fixtures: tiny models and a tokenizer built on the spot (no network, no shipped weights)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neox.model.config import ModelConfig
from neox.model.gpt_neox import GPTNeoX, initialized

REPO = Path(__file__).resolve().parents[1]
NEOX = str(Path(sys.executable).with_name("neox"))  # the console script, as users run it


def neox(*args, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `neox ARGS...` from the repository, with `env` added to the environment; assert it succeeds (or fails,
    with ok=False)."""
    result = subprocess.run(
        [NEOX, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    return result


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        vocab_size=256,
        max_position_embeddings=64,
        rotary_pct=0.25,
        gpt_j_residual=True,
        bias_gelu_fusion=True,
        no_weight_tying=True,
        init_method="small_init",
        output_layer_init_method="wang_init",
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> GPTNeoX:
    return initialized(tiny_config(**overrides), seed).eval()


# `make test` runs test files on two workers (pytest-xdist --dist loadfile, in collection order): the longest files
# go first, so that none of them starts last and runs alone at the end.
LONGEST_FILES = (
    "tests/integration/test_flows.py",
    "tests/integration/test_train.py",
    "tests/integration/test_model_parallel.py",
    "tests/integration/test_eval.py",
    "tests/unit/test_cli.py",
    "tests/infra/test_cluster_auth.py",
    "tests/unit/data/test_tokenize.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONGEST_FILES)))  # stable: the rest as found


class Payload:
    """What an attacker would plant in a pickle: unpickling it calls `open(marker, "w")`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def tracking_store_of_its_own():
    """`mlflow.set_tracking_uri` (some tests load models by `models:/` URI) also sets MLFLOW_TRACKING_URI, which
    every neox command reads before its config: one test's store (or the developer's) must not become a test's."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory) -> Path:
    """A 256-token byte-level BPE trained on a little English, with GPT-NeoX's <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [
        "Once upon a time there was a small language model that wanted to learn.",
        "It read the standard library of Python and the documentation of every module.",
        "The quick brown fox jumps over the lazy dog. " * 3,
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=256, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text, trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (each start costs seconds)."""
    import ray

    from neox.runtime.ray_cluster import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    """The embedded corpus, built once: 4 Pile-format shards of the stdlib + pydoc topics."""
    from neox.data.sample import build_sample_corpus

    out = tmp_path_factory.mktemp("sample-corpus")
    build_sample_corpus(out, shards=4)
    return out


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, sample_corpus) -> Path:
    """300 sample-corpus documents in 3 shards: big enough to mean something, small enough to tokenize fast."""
    from neox.data.jsonl import Rejects, list_shards, read_shard, write_shard

    docs = [d for shard in list_shards(sample_corpus)[:1] for d in read_shard(shard, Rejects())][:300]
    out = tmp_path_factory.mktemp("small-corpus")
    for i in range(3):
        write_shard(out / f"{i:02d}.jsonl.zst", ({"text": d.text, "meta": d.meta} for d in docs[i::3]))
    return out


@pytest.fixture(scope="session")
def corpus_tokenizer(tmp_path_factory, small_corpus) -> Path:
    """A 2,048-token byte-level BPE trained on the small corpus (with <|endoftext|> and <|padding|>)."""
    from neox.data.jsonl import Rejects, list_shards, read_shard
    from neox.data.tokenizer import train_bpe

    texts = (d.text for shard in list_shards(small_corpus) for d in read_shard(shard, Rejects()))
    path = tmp_path_factory.mktemp("corpus-tokenizer") / "tokenizer.json"
    train_bpe(texts, vocab_size=2048, show_progress=False).save(str(path))
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local moto S3 server over real HTTP (S3 is the one service the tests cannot reach for real)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def aws_env(s3_endpoint: str) -> dict[str, str]:
    """The AWS environment of a client of the moto server."""
    return {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch) -> dict[str, str]:
    """The AWS environment pointing at the moto server, set for this test (and its subprocesses)."""
    env = aws_env(s3_endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
