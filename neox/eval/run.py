"""The eval stage: lm-eval on a checkpoint, results JSON + metrics in the stage output and in MLflow.

Offline tasks (the default) read the eval-data stage's JSONL through the task YAMLs in `configs/eval/`.
Standard tasks (the Pythia suite) need their Hugging Face datasets: when those cannot be reached the stage
fails before loading anything, naming the datasets to pre-cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from neox.errors import ConfigError, DataError, MissingInput, ServiceError
from neox.eval.config import OFFLINE_TASKS, PYTHIA_SUITE, RESPONSE_TASK, EvalConfig
from neox.model.digest import checkpoint_digest
from neox.pipeline.layout import HF_CONFIG_FILE, HF_DIR, MODEL_DIR, WEIGHTS_FILE, hf_export_of
from neox.pipeline.stage import StageResult, StageRun, input_fingerprint, read_manifest, run_stage

STAGE = "eval"
CODE_VERSION = "2"  # 2: keyed on every checkpoint file; trusted only with their MLflow record (neox.eval.record)
RESULTS_FILE = "results.json"
CHECKPOINT_PATH_TAG = "neox.checkpoint"  # the evaluated checkpoint folder, on the eval run and its model version
EVAL_METRICS_FILE = "metrics.json"  # the flat {task/metric: value} scores (not training's metrics.jsonl)
TASKS_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval"


def task_names(spec: str) -> tuple[str, ...]:
    """Task names from a comma-separated list, `pythia` standing for the Pythia suite."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    return tuple(task for name in names for task in (PYTHIA_SUITE if name == "pythia" else (name,)))


class TaskDataUnavailable(ServiceError):
    """Standard task data that is neither reachable nor cached."""


def offline_task_config(name: str, eval_data: Path) -> dict[str, Any]:
    """A task YAML from configs/eval with its data file resolved inside the eval-data output."""
    config = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {split: str(Path(eval_data) / file) for split, file in files.items()}
    missing = [file for file in files.values() if not (Path(eval_data) / file).exists()]
    if missing:
        what = "fine-tuning data (an instructions stage output)" if name == RESPONSE_TASK else "its eval-data"
        raise ConfigError(f"task {name} needs {what}: {eval_data} has no {', '.join(missing)}")
    if name == RESPONSE_TASK:  # lm-eval scores loglikelihood tasks per document; this one per response byte
        config["process_results"] = response_bytes
    return config


def response_bytes(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, tuple[float, int]]:
    """(log-likelihood, UTF-8 bytes) of one response, which bits_per_byte and weighted_perplexity aggregate."""
    loglikelihood, _ = results[0]
    pair = (loglikelihood, len(doc["target"].encode()))
    return {"bits_per_byte": pair, "byte_perplexity": pair}


def check_task_data(names: list[str], task_manager) -> None:
    """Fail fast, naming the datasets, when standard tasks' data is neither reachable nor cached."""
    from huggingface_hub import constants

    from neox.runtime.network import reachable

    unknown = [n for n in names if n not in task_manager.task_index]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    datasets_needed = sorted({(task_manager.task_index[n].cfg or {}).get("dataset_path", "?") for n in names})
    hint = (
        f"Pre-cache them on a connected machine (`HF_DATASETS_CACHE=DIR lm_eval --tasks {','.join(names)} "
        "--limit 1 ...`, or `datasets.load_dataset(NAME)` for each), copy DIR here and set "
        "HF_DATASETS_CACHE=DIR HF_HUB_OFFLINE=1."
    )
    if not constants.HF_HUB_OFFLINE:
        if reachable(constants.ENDPOINT):
            return
        raise TaskDataUnavailable(
            f"the Hugging Face hub ({constants.ENDPOINT}) is not reachable and tasks "
            f"{', '.join(names)} need datasets {', '.join(datasets_needed)}. {hint}"
        )
    import datasets

    missing = []
    for name in names:
        cfg = task_manager.task_index[name].cfg or {}
        try:
            datasets.load_dataset_builder(cfg.get("dataset_path"), cfg.get("dataset_name"))
        except Exception:  # datasets raises several types for "not in the offline cache"
            missing.append(cfg.get("dataset_path"))
    if missing:
        raise TaskDataUnavailable(
            f"HF_HUB_OFFLINE=1 and datasets {', '.join(sorted(set(missing)))} are not in the cache. {hint}"
        )


def run_lm_eval(checkpoint: str | Path, eval_data: str | Path | None, cfg: EvalConfig) -> dict[str, Any]:
    """lm-eval's results dict for `cfg.tasks` on a neox checkpoint folder (`final/model`)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    offline = [n for n in cfg.tasks if n in OFFLINE_TASKS]
    standard = [n for n in cfg.tasks if n not in OFFLINE_TASKS]
    if offline and eval_data is None:
        raise ConfigError(f"tasks {', '.join(offline)} need the eval-data stage output (neox eval-data)")
    task_manager = TaskManager(include_defaults=bool(standard))
    if standard:
        check_task_data(standard, task_manager)
    tasks = [offline_task_config(n, Path(eval_data)) for n in offline] + standard
    if cfg.model == "neox":
        from neox.eval.adapter import NeoxLM

        model = NeoxLM(pretrained=str(checkpoint), device=cfg.device, batch_size=cfg.batch_size, dtype=cfg.dtype)
    else:
        from lm_eval.models.huggingface import HFLM

        model = HFLM(
            pretrained=str(checked_hf_export(checkpoint)),
            device=cfg.device,
            batch_size=cfg.batch_size,
            dtype=cfg.dtype,
            use_safetensors=True,
        )
    results = lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=task_manager, limit=cfg.limit, bootstrap_iters=0, log_samples=False
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return results


def checked_hf_export(checkpoint: Path) -> Path:
    """The checkpoint's Hugging Face export, which `eval.model: hf` scores; pickled weights are refused before
    transformers would unpickle them."""
    from neox.model.hf import safetensors_weights

    hf_dir = hf_export_of(checkpoint)
    if not (hf_dir / HF_CONFIG_FILE).exists():
        raise ConfigError(f"eval.model hf needs the Hugging Face export next to the checkpoint ({hf_dir})")
    safetensors_weights(hf_dir)
    return hf_dir


def evaluated_here(
    checkpoint: str, digest: str, eval_data: str | None, cfg: EvalConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """lm-eval's results as plain JSON data (so they travel back from a Ray worker), and where they were computed.
    lm-eval reads a private copy of the checkpoint, made here as it is hashed, so the scores are those of the
    checkpoint whose `digest` the stage is keyed on and records, even if its files are swapped meanwhile."""
    import torch
    from lm_eval.utils import handle_non_serializable

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():  # checked where lm-eval runs (a Ray task)
        raise ConfigError(f"eval.device is {cfg.device}, but {socket.gethostname()} has no CUDA GPU")
    with tempfile.TemporaryDirectory(prefix="neox-eval-") as snapshot:
        read = (HF_DIR,) if cfg.model == "hf" else (MODEL_DIR,)
        if checkpoint_digest(checkpoint, Path(snapshot), read) != digest:
            raise DataError(
                f"{checkpoint} changed after its eval began (its files no longer hash as they did): run it again"
            )
        results = run_lm_eval(Path(snapshot) / MODEL_DIR, eval_data, cfg)
    results = json.loads(json.dumps(results, default=handle_non_serializable))
    return results, {"host": socket.gethostname(), "pid": os.getpid()}


def evaluate(
    checkpoint: Path, digest: str, eval_data: str | Path | None, cfg: EvalConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """lm-eval here, or with `ray_address` as a Ray task on the cluster: a flow runs on a head node without a GPU,
    and the task takes one on a GPU node (the checkpoint and eval data must be on a path every node sees)."""
    args = (str(checkpoint), digest, None if eval_data is None else str(eval_data), cfg)
    if cfg.ray_address is None:
        return evaluated_here(*args)
    import ray

    from neox.runtime.ray_cluster import ensure_ray

    ensure_ray(cfg.ray_address)
    gpus = 1 if cfg.device.startswith("cuda") else 0
    evaluation = ray.remote(num_cpus=1, num_gpus=gpus)(evaluated_here).remote(*args)
    try:
        return ray.get(evaluation)
    except KeyboardInterrupt:  # Ctrl-C, a timeout: not left running on the GPU node
        ray.cancel(evaluation)
        raise


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """{"task/metric": value} from lm-eval's results (filter suffixes and stderr dropped)."""
    out = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, _ = key.partition(",")
            if key == "alias" or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            out[f"{task}/{metric}"] = float(value)
    return out


def metrics_table(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{name:<{width}}  {value:12.5g}" for name, value in sorted(metrics.items()))


def eval_stage(
    checkpoint: str | Path,
    eval_data: str | Path | None,
    work_root: str | Path,
    cfg: EvalConfig = EvalConfig(),
    reuse_if: Callable[[Path], object] = lambda output: True,
    on_publish: Callable[[Path], object] = lambda output: None,
) -> StageResult:
    """Run (or reuse, when `reuse_if` vouches for it) the evaluation of `checkpoint`; returns the stage output
    (results.json, metrics.json). `neox.eval.record.evaluate_and_record` runs it with its MLflow record."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise MissingInput(f"{checkpoint} is not a neox checkpoint: {WEIGHTS_FILE} is missing")
    config = {**dataclasses.asdict(cfg), "tasks": list(cfg.tasks)}
    del config["ray_address"]  # where it runs does not change what it computes
    if cfg.model == "hf":
        checked_hf_export(checkpoint)  # here, to name the user's folder; again on the copy lm-eval reads
    inputs = {"checkpoint": checkpoint_digest(checkpoint)}
    if eval_data is not None:
        from neox.eval.data import STAGE as EVAL_DATA_STAGE

        if read_manifest(eval_data).get("stage") != EVAL_DATA_STAGE:
            raise DataError(f"{eval_data} is not an eval-data stage output (neox eval-data)")
        inputs["eval_data"] = input_fingerprint(eval_data)

    def body(run: StageRun) -> None:
        results, ran_on = evaluate(checkpoint, inputs["checkpoint"], eval_data, cfg)
        metrics = flat_metrics(results)
        (run.tmp / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        (run.tmp / EVAL_METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        run.stats.update(metrics=metrics, checkpoint=str(checkpoint.resolve()), ran_on=ran_on)

    return run_stage(work_root, STAGE, CODE_VERSION, config, inputs, body, lambda out: bool(reuse_if(out)), on_publish)
