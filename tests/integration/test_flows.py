"""The Prefect flows on Prefect's local ephemeral API, as `make demo` runs them: `pretrain` end to end on a tiny
config (data stages on Ray, 2 Ray Train workers, lm-eval, MLflow registry), then a rerun that reuses every
stage's verified output and the finished training run, leaving every file untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from neox.data.jsonl import list_shards
from tests.conftest import REPO
from tests.integration.conftest import SPLIT


def files_state(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() and "index-cache" not in p.parts}


def test_pretrain_flow_runs_end_to_end_and_a_rerun_reuses_every_stage(tmp_path, small_corpus, corpus_tokenizer):
    work = tmp_path / "work"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "work_root": str(work),
        "data": {"sources": [str(p) for p in list_shards(small_corpus)], "tokenizer": {"from": str(corpus_tokenizer)},
                 "tokenize": {"prefix": "corpus"}},
        "train": {"model": str(REPO / "configs" / "model" / "tiny.yml"), "name": "flow", "storage_path": str(work / "train"),
                  "split": SPLIT, "seq_length": 64, "micro_batch_size": 4, "train_iters": 10, "eval_interval": 10,
                  "eval_iters": 1, "checkpoint_interval": 10, "log_interval": 5, "num_workers": 2,
                  "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "eval": {"batch_size": 8, "data": {"max_documents": 8, "lastword_chars": 300}},
        "registry": {"name": "flow-tiny"},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / "prefect-results"))

    def pretrain() -> str:
        done = subprocess.run([sys.executable, "-m", "flows.pretrain", str(config)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-5000:]
        assert "Flow run" in out and "Finished in state Completed()" in out
        return out

    first = pretrain()
    assert "flow-tiny version 1 is `champion`" in first and "neox_heldout/bits_per_byte" in first
    for stage in ("download", "dedup", "tokenizer", "tokenize", "eval-data", "eval"):
        assert any((work / stage).iterdir()), stage
    before = files_state(work)

    second = pretrain()
    for stage in ("download", "dedup", "tokenizer", "tokenize", "eval"):
        assert f"{stage}: reused the verified output" in second, stage
    assert "train: reused" in second and "flow-tiny version 1 is `champion` (already champion)" in second
    assert files_state(work) == before  # same files, same bytes, same mtimes
