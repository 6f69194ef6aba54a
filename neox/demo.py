"""`make demo` while the pipeline is being built: runs, for real, every stage that exists today on
`configs/pipeline/local.yaml`, into `work/`, and says plainly what does not exist yet.

1. data: the embedded corpus (Python's stdlib sources + pydoc topics) as Pile-format shards in a local mirror,
   fetched over `file://`, deduplicated, a BPE trained, tokenized to GPT-NeoX `.bin/.idx`;
2. training: the tiny GPT-NeoX on 2 local Ray Train workers with DeepSpeed (CPU), metrics to MLflow
   (`sqlite:///mlflow.db`), checkpoints, and the final weights exported to Hugging Face format;
3. a check that `transformers` loads the export and computes our logits, and a sample from the model;
4. evaluation: lm-eval (our `neox` model adapter) on offline tasks built from the held-out test documents,
   logged to MLflow;
5. registry: the checkpoint becomes a version of the registered model `registry.name`, and the promotion gate
   decides whether it takes the `champion` alias.

A rerun reuses the finished data stages and starts a fresh training run. The Prefect flows are not built yet;
`flows/pretrain.py` replaces this module once they are.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pipeline" / "local.yaml"


def main() -> None:
    from neox.data.prepare import prepare_data
    from neox.stage import read_manifest, stage_output
    from neox.train.config import load_train_config, read_pipeline_config
    from neox.eval.data import eval_data_stage
    from neox.eval.run import METRICS_FILE, eval_configs, eval_stage, log_eval, metrics_table
    from neox.registry import promote, promotion_rule, register
    from neox.train.launch import absolute_tracking_uri, storage_of, train

    raw = read_pipeline_config(CONFIG)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    tokenized = prepare_data(raw["data"], Path(raw["work_root"]))
    timings["data stages (corpus, download, dedup, tokenizer, tokenize)"] = time.perf_counter() - started

    cfg = dataclasses.replace(load_train_config(CONFIG), data=str(tokenized))
    shutil.rmtree(storage_of(cfg).local_dir(), ignore_errors=True)  # the demo trains afresh each time
    started = time.perf_counter()
    run_dir = Path(train(cfg))
    timings[f"training ({cfg.train_iters} steps, {cfg.num_workers} Ray Train workers, DeepSpeed ZeRO-{cfg.zero_stage})"] = time.perf_counter() - started

    tracking = absolute_tracking_uri(cfg.mlflow_tracking_uri)
    data_cfg, eval_cfg = eval_configs(raw.get("eval"), cfg.split)
    started = time.perf_counter()
    evaluated = eval_stage(run_dir / "final" / "model", eval_data_stage(tokenized, raw["work_root"], data_cfg),
                           raw["work_root"], eval_cfg)
    eval_run = log_eval(evaluated, tracking, cfg.mlflow_experiment)
    timings[f"evaluation (lm-eval: {', '.join(eval_cfg.tasks)})"] = time.perf_counter() - started

    started = time.perf_counter()
    registry = raw.get("registry") or {}
    name = registry.get("name", "neox-tiny")
    version = register(evaluated, name, tracking, raw["work_root"], cfg.mlflow_experiment)
    decision = promote(name, version, promotion_rule(registry.get("rule")), tracking)
    timings["registry (register the version, promotion gate)"] = time.perf_counter() - started

    tokenize_manifest = read_manifest(tokenized)
    tokenize_stats = tokenize_manifest["stats"]
    # the dedup output this dataset was tokenized from: its key is the tokenize stage's input
    dedup_stats = read_manifest(stage_output(raw["work_root"], "dedup", tokenize_manifest["inputs"]["shards"]))["stats"]
    curve = (run_dir / "metrics.jsonl").read_text().splitlines()
    first, last = json.loads(curve[0]), json.loads(curve[-1])
    print("\n== neox-pipeline demo")
    print(f"   dedup: {dedup_stats['documents_in']} -> {dedup_stats['documents_out']} documents "
          f"({dedup_stats['exact_duplicates']} exact, {dedup_stats['near_duplicates']} near duplicates)")
    print(f"   tokenize: {tokenize_stats['tokens']:,} tokens, vocabulary {tokenize_stats['vocab_size']} -> {tokenized}")
    print(f"   training loss: {first['loss']:.3f} at step {first['step']} -> {last['loss']:.3f} at step {last['step']}")
    ok = check_export(run_dir)
    print(f"\n   lm-eval (MLflow run {eval_run}):")
    print("\n".join("     " + line for line in metrics_table(json.loads((evaluated / METRICS_FILE).read_text())).splitlines()))
    verdict = "is now `champion`" if decision.promote else "stays `candidate`"
    print(f"   registry: {name} version {version} {verdict} ({'; '.join(decision.reasons)})")
    print("\n   stage timings:")
    for label, seconds in timings.items():
        print(f"   {seconds:7.1f} s  {label}")
    print(f"\n   run folder: {run_dir} (metrics.jsonl, checkpoints, final/model, final/hf)")
    print(f"   MLflow:     .venv/bin/mlflow ui --backend-store-uri {cfg.mlflow_tracking_uri}   (runs, metrics, models)")
    print(f"   champion:   mlflow.pyfunc.load_model('models:/{name}@champion').predict(['def main():'])")
    print("   Not built yet: the Prefect flows.")
    if not ok:
        sys.exit("export check failed")


def check_export(run_dir: Path) -> bool:
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from neox.model.generate import SamplingConfig, generate
    from neox.model.weights import load_model

    ours = load_model(run_dir / "final" / "model")
    theirs = AutoModelForCausalLM.from_pretrained(run_dir / "final" / "hf").eval()
    tok = Tokenizer.from_file(str(run_dir / "final" / "model" / "tokenizer.json"))
    ids = torch.tensor([tok.encode("def main():\n    return").ids])
    with torch.no_grad():
        diff = (theirs(ids).logits - ours(ids)).abs().max().item()
    sample = generate(ours, ids, SamplingConfig(max_new_tokens=24, temperature=0.8, top_p=0.95), torch.Generator().manual_seed(0))
    print(f"   Hugging Face export: max |logit difference| vs ours {diff:.2e}")
    print(f"   sample: {tok.decode(sample[0].tolist())!r}")
    return diff <= 1e-4


if __name__ == "__main__":
    main()
