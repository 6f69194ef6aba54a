"""The end-of-run summary `make demo` prints for a `pretrain` result: what each stage produced, a check that
`transformers` loads the export and computes our logits, a sample, the eval table, the registry verdict,
stage timings, and the commands that open the Prefect and MLflow UIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from neox.eval.run import EVAL_METRICS_FILE, metrics_table
from neox.pipeline.config import PipelineConfig
from neox.pipeline.layout import CHAT_TEMPLATE_FILE, TOKENIZER_FILE, TRAIN_METRICS_FILE, final_hf, final_model
from neox.pipeline.stage import read_manifest, stage_output


def print_summary(cfg: PipelineConfig, result: dict[str, Any], total_seconds: float, title: str = "pretrain") -> bool:
    """Print the summary; returns whether the Hugging Face export check passed."""
    tokenized, run_dir = Path(result["tokenized"]), Path(result["run"])
    tokenize_manifest = read_manifest(tokenized)
    stats = tokenize_manifest["stats"]
    logged = logged_losses((run_dir / TRAIN_METRICS_FILE).read_text(), cfg.train.log_interval)
    (first_step, first_loss), (last_step, last_loss) = logged[0], logged[-1]
    print(f"\n== neox-pipeline: {title}")
    if result.get("continued_from"):
        print(f"   continued from champion version {result['continued_from']}")
    if result.get("base"):
        print(f"   fine-tuned from {result['base']}")
    if tokenize_manifest["stage"] == "instructions":
        print(
            f"   instructions: {stats['documents']} examples, {stats['tokens']:,} tokens of which "
            f"{stats['scored_tokens']:,} scored, {sum(stats['rejects'].values())} lines rejected -> {tokenized}"
        )
    else:
        # the dedup output this dataset was tokenized from: its key is the tokenize stage's input
        dedup = read_manifest(stage_output(cfg.work_root, "dedup", tokenize_manifest["inputs"]["shards"]))["stats"]
        print(
            f"   dedup: {dedup['documents_in']} -> {dedup['documents_out']} documents "
            f"({dedup['exact_duplicates']} exact, {dedup['near_duplicates']} near duplicates)"
        )
        print(f"   tokenize: {stats['tokens']:,} tokens, vocabulary {stats['vocab_size']} -> {tokenized}")
    print(
        f"   training: loss {first_loss:.3f} at step {first_step} -> {last_loss:.3f} at step {last_step}, "
        f"each the mean since the previous log line, as MLflow's train/loss ({run_dir})"
    )
    ok, parameters = check_export(run_dir)
    metrics = json.loads((Path(result["eval"]) / EVAL_METRICS_FILE).read_text())
    print("   lm-eval:")
    print("\n".join("     " + line for line in metrics_table(metrics).splitlines()))
    if result.get("base_metrics"):
        print("   the base model on the same held-out data:")
        print("\n".join("     " + line for line in metrics_table(result["base_metrics"]).splitlines()))
    print(reading(metrics, parameters, last_step, stats["tokens"]))
    name = cfg.registry.name
    verdict = "is `champion`" if result["promoted"] else "stays `candidate`"
    print(f"   registry: {name} version {result['version']} {verdict} ({'; '.join(result['reasons'])})")
    print("\n   stage timings:")
    for stage, seconds in result["timings"].items():
        print(f"   {seconds:7.1f} s  {stage}")
    print(f"   {total_seconds:7.1f} s  in all")
    print("\n   Prefect UI: .venv/bin/prefect server start      (flow runs, subflows, task states, artifacts)")
    print(
        f"   MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {cfg.train.tracking_uri}"
        "   (runs, metrics, models, aliases)"
    )
    example = CHAT_PROMPT if (final_model(run_dir) / CHAT_TEMPLATE_FILE).exists() else "def main():"
    print(f"   champion:   mlflow.pyfunc.load_model('models:/{name}@champion').predict([{example!r}])")
    return ok


def logged_losses(metrics_jsonl: str, log_interval: int) -> list[tuple[int, float]]:
    """(step, mean loss) as training logs them (`neox.train.tracking.Tracker`): the mean over the steps since the
    previous log line, every log_interval steps and at the last step."""
    records = [json.loads(line) for line in metrics_jsonl.splitlines()]
    logged, window = [], []
    for i, record in enumerate(records):
        window.append(record["loss"])
        if record["step"] % log_interval == 0 or i == len(records) - 1:
            logged.append((record["step"], sum(window) / len(window)))
            window = []
    return logged


def reading(metrics: dict[str, float], parameters: int, steps: int, tokens: int) -> str:
    """One line on what the scores mean for a model of this size and training."""
    line = f"   reading: a {parameters / 1e6:.1f}M-parameter model after {steps} steps over a {tokens:,}-token corpus."
    bpb = metrics.get("neox_heldout/bits_per_byte")
    if bpb is not None:
        line += f" {bpb:.2f} bits per byte on held-out text: 8 is random bytes; large trained models score under 1."
    if "neox_lastword/acc" in metrics:
        line += " Guessing the last word takes far more training: an accuracy near 0 is expected here."
    return line


CHAT_PROMPT = "What does the Python function `json.dumps` do?"


def check_export(run_dir: Path) -> tuple[bool, int]:
    """Whether transformers loads the export and computes our logits; and the model's parameter count."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar for loading 28 tensors, in the middle of the summary

    from neox.model.checkpoint import load_model
    from neox.model.generate import SamplingConfig, generate

    ours = load_model(final_model(run_dir))
    theirs = AutoModelForCausalLM.from_pretrained(final_hf(run_dir)).eval()
    tok = Tokenizer.from_file(str(final_model(run_dir) / TOKENIZER_FILE))
    prompt = "def main():\n    return"
    if (final_model(run_dir) / CHAT_TEMPLATE_FILE).exists():  # fine-tuned on chats: asked as it was taught
        from neox.data.chat import chat_renderer

        render = chat_renderer(
            final_model(run_dir) / TOKENIZER_FILE, (final_model(run_dir) / CHAT_TEMPLATE_FILE).read_text()
        )
        prompt = render([{"role": "user", "content": CHAT_PROMPT}], True)
    ids = torch.tensor([tok.encode(prompt).ids])
    with torch.no_grad():
        diff = (theirs(ids).logits - ours(ids)).abs().max().item()
    sample = generate(
        ours, ids, SamplingConfig(max_new_tokens=24, temperature=0.8, top_p=0.95), torch.Generator().manual_seed(0)
    )
    print(f"   Hugging Face export: max |logit difference| vs ours {diff:.2e}")
    print(f"   sample: {tok.decode(sample[0].tolist())!r}")
    return diff <= 1e-4, sum(p.numel() for p in ours.parameters())
