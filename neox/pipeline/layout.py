"""The names of every file and folder of a training run and of a model checkpoint, spelled here and nowhere else.
It imports nothing heavy (no torch), so the registry, retraining and the summary can find files without it.

    <storage_path>/<key>/                  a training run (neox.train.identity: the key hashes what changes the weights)
        run.json                           its key, label (train.name), identity, dataset and lineage
        mlflow_run_id                      the MLflow run its metrics go to (a resume continues it)
        data.json                          the tokenized dataset it reads, and that dataset's fingerprint
        metrics.jsonl                      one JSON line per step (loss, lr, grad norm, step time)
        index-cache/                       the GPT2Dataset sample indices
        checkpoint_<timestamp>/            Ray Train's checkpoints (it also writes checkpoint_manager_snapshot.json)
            neox_state.json                step, data fingerprint, model config: vetted before a resume, without torch
            checkpoint/                    the DeepSpeed checkpoint (DeepSpeed's "tag" folder)
            rng_rank<R>.safetensors        rank R's torch and numpy RNG state
        final/model/                       the final weights as a model checkpoint (below)
        final/hf/                          the same weights as a Hugging Face GPTNeoXForCausalLM folder:
            config.json, model.safetensors, tokenizer.json, tokenizer_config.json

    a model checkpoint (final/model, `neox init-model`, `neox import-hf`)
        config.yml                         the model's GPT-NeoX keys
        model.safetensors                  the weights
        tokenizer.json                     the tokenizer, when there is one (also in every tokenize stage output)
        chat_template.jinja                the chat template it was fine-tuned with (also in instructions outputs)
"""

from __future__ import annotations

from pathlib import Path

SHARD_SUFFIXES = (".jsonl.zst", ".jsonl")  # raw and deduplicated text: what a stage reading a folder takes in

# a model checkpoint
CONFIG_FILE = "config.yml"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # beside tokenizer.json, when the model was fine-tuned on chats

# a training run
RUN_FILE = "run.json"
MLFLOW_RUN_FILE = "mlflow_run_id"
DATA_FILE = "data.json"
TRAIN_METRICS_FILE = "metrics.jsonl"
DIVERGED_FILE = "diverged.json"  # the step whose loss or gradient norm was not a number, for the driver
INDEX_CACHE_DIR = "index-cache"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train names its checkpoint folders checkpoint_<timestamp>
STATE_FILE = "neox_state.json"
DEEPSPEED_TAG = "checkpoint"
FINAL_DIR = "final"
MODEL_DIR = "model"
HF_DIR = "hf"
HF_CONFIG_FILE = "config.json"  # in final/hf: transformers' config (the weights are model.safetensors there too)
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
FINAL_MODEL = (FINAL_DIR, MODEL_DIR)  # as path parts, for run folders on object storage too
FINAL_HF = (FINAL_DIR, HF_DIR)


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


def final_model(run: str | Path) -> Path:
    return Path(run).joinpath(*FINAL_MODEL)


def final_hf(run: str | Path) -> Path:
    return Path(run).joinpath(*FINAL_HF)


def hf_export_of(checkpoint: str | Path) -> Path:
    """Where the Hugging Face export of a run's final checkpoint lies (beside it, in final/hf)."""
    return Path(checkpoint).parent / HF_DIR


def run_of(checkpoint: str | Path) -> Path | None:
    """The training run a checkpoint is the final model of, or None for a checkpoint made some other way."""
    checkpoint = Path(checkpoint)
    if checkpoint.name == MODEL_DIR and checkpoint.parent.name == FINAL_DIR:
        return checkpoint.parent.parent
    return None


def newest_checkpoint(run: str | Path) -> Path | None:
    """The run's newest checkpoint folder holding a DeepSpeed checkpoint, or None. Ray Train's
    checkpoint_manager_snapshot.json shares the folders' prefix: only folders with the DeepSpeed tag count."""
    run = Path(run)
    if not run.is_dir():
        return None
    folders = sorted(p for p in run.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / DEEPSPEED_TAG).is_dir())
    return folders[-1] if folders else None
