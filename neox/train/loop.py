"""The per-worker training loop that Ray Train runs on every worker: DeepSpeed around our GPT-NeoX.

Global batch `step` holds samples [step * G, (step + 1) * G) of the training dataset; data-parallel rank r reads
its contiguous slice, micro-batch by micro-batch. The position comes from the step alone, so a resumed run
needs no loader state to read exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neox.config import ModelConfig
from neox.data.dataset import build_split_datasets
from neox.model.gpt_neox import GPTNeoX, init_weights
from neox.train.config import TrainConfig
from neox.train.flops import flops_per_step, gpu_peak_tflops
from neox.train.schedule import lr_at

CHECKPOINT_TAG = "checkpoint"
STATE_FILE = "neox_state.json"
METRICS_FILE = "metrics.jsonl"
DATA_FILE = "data.json"
FAULT_ENV = "NEOX_FAIL_AFTER_CHECKPOINT"  # a test hook: the step whose checkpoint is followed by a failure  # the tokenized dataset a run reads (written by the driver), for the registry's lineage


def sample_indices(step: int, micro: int, rank: int, cfg: TrainConfig) -> np.ndarray:
    """Dataset indices of one micro-batch: rank `rank`'s slice of global batch `step`, micro-batch `micro`."""
    per_rank = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    start = step * cfg.global_batch_size + rank * per_rank + micro * cfg.micro_batch_size
    return np.arange(start, start + cfg.micro_batch_size)


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed's config for this run (see `effective_zero_stage` for a single worker)."""
    stage = effective_zero_stage(cfg, world_size)
    config = {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.gradient_clipping,
        # torch's AdamW: DeepSpeed's fused CPU Adam would be JIT-compiled on first use (~100 s on 2 cores)
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.eps,
                                                 "weight_decay": cfg.weight_decay, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16" and stage == 1:
        # gradients accumulate in fp32, as in GPT-NeoX's bf16 configs: DeepSpeed then runs its BF16 optimizer
        # (flat fp32 master weights). Stage 0 refuses that mix; stages 2-3 keep fp32 partitions of their own.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def effective_zero_stage(cfg: TrainConfig, world_size: int) -> int:
    """ZeRO shards state across data-parallel ranks: one fp32 rank has nothing to shard, and stages 1-3 would
    only add their flat-buffer bookkeeping (~15% of a CPU step), so it runs stage 0. In bf16/fp16 the stage stays:
    without ZeRO, DeepSpeed keeps the fp32 master weights in its per-parameter (unfused) optimizer wrapper,
    which measured 20% slower than a bare loop for the pythia-410m shape on an H100."""
    return cfg.zero_stage if world_size > 1 or cfg.precision != "fp32" else 0


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """GPT-NeoX's split: no weight decay on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def apply_activation_checkpointing(model: GPTNeoX) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.layers:
        forward = layer.forward
        layer.forward = lambda *args, _f=forward, **kwargs: checkpoint(_f, *args, use_reentrant=False, **kwargs)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import deepspeed
    import ray.train
    import torch.distributed as dist

    cfg = TrainConfig(**{**config["train"], "model": tuple(config["train"]["model"]), "betas": tuple(config["train"]["betas"])})
    mcfg = ModelConfig(**config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    device = torch.device("cuda", ray.train.torch.get_device().index) if cfg.use_gpu else torch.device("cpu")

    model = init_weights(GPTNeoX(mcfg), generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.init_from:  # continued pretraining; a checkpoint restored below replaces these weights
        from safetensors.torch import load_file

        from neox.model.weights import WEIGHTS_FILE

        model.load_state_dict(load_file(str(Path(cfg.init_from) / WEIGHTS_FILE)))
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=parameter_groups(model, cfg.weight_decay),
        config=deepspeed_config(cfg, world),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_at(s, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters, cfg.lr_decay_style) / cfg.lr
        ),
    )
    if cfg.compile:
        engine.compile()  # inside the engine, so checkpoints keep the plain module's parameter names
    start_step = restore(engine, config, rank)

    evals = cfg.train_iters // cfg.eval_interval + 1
    datasets = build_split_datasets(
        config["data_prefix"], cfg.split,
        {"train": cfg.train_iters * cfg.global_batch_size, "valid": evals * cfg.eval_iters * cfg.global_batch_size},
        seq_length=cfg.seq_length, seed=cfg.seed, cache_dir=config["index_cache"],
    )
    train_set, valid_set = datasets["train"], datasets.get("valid")
    tracker = Tracker(config, cfg, mcfg, world, start_step) if rank == 0 else None

    def batch(dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(np.stack([dataset[int(i) % len(dataset)] for i in indices])).to(device)
        return tokens[:, :-1], tokens[:, 1:]

    def loss_of(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = engine(inputs)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))

    def mean_over_ranks(value: torch.Tensor) -> float:
        value = value.detach().float().clone()
        dist.all_reduce(value)
        return value.item() / world

    for step in range(start_step, cfg.train_iters):
        started = time.perf_counter()
        engine.train()
        losses = []
        for micro in range(cfg.gradient_accumulation_steps):
            inputs, labels = batch(train_set, sample_indices(step, micro, rank, cfg))
            loss = loss_of(inputs, labels)
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())
        loss_value = mean_over_ranks(torch.stack(losses).mean())
        grad_norm = engine.get_global_grad_norm()
        grad_norm = None if grad_norm is None else float(grad_norm)
        seconds = time.perf_counter() - started
        done = step + 1
        if tracker is not None:
            tracker.step(done, loss_value, engine.get_lr()[0], grad_norm, loss_scale(engine), seconds)
        if valid_set is not None and (done % cfg.eval_interval == 0 or done == cfg.train_iters):
            engine.eval()
            with torch.no_grad():
                valid_losses = []
                for i in range(cfg.eval_iters):
                    indices = sample_indices((done // cfg.eval_interval) * cfg.eval_iters + i, 0, rank, cfg)
                    valid_losses.append(loss_of(*batch(valid_set, indices)))
            valid = mean_over_ranks(torch.stack(valid_losses).mean())
            if tracker is not None:
                tracker.evaluation(done, valid)
        if done % cfg.checkpoint_interval == 0 or done == cfg.train_iters:
            if tracker is not None:
                tracker.publish()
            save_and_report(engine, config, rank, done, loss_value)
            if os.environ.get(FAULT_ENV) == str(done):
                raise InjectedFault(f"{FAULT_ENV}={done}: failing on purpose after the step-{done} checkpoint")
    if tracker is not None:
        tracker.close()
    export_final(engine, config, rank, effective_zero_stage(cfg, world))


def loss_scale(engine) -> float:
    return float(getattr(engine.optimizer, "cur_scale", 1.0) or 1.0)


def client_state(config: dict[str, Any], step: int) -> dict[str, Any]:
    return {"step": step, "data_fingerprint": config["data_fingerprint"], "model_config": config["model"]}


def save_and_report(engine, config: dict[str, Any], rank: int, step: int, loss: float) -> None:
    """Every rank writes its part of the DeepSpeed checkpoint (and its RNG state); Ray Train merges the
    parts into one checkpoint directory in storage."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="neox-ckpt-") as tmp:
        state = client_state(config, step)
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state=state)
        if rank == 0:  # readable without torch, so the driver can vet a resume before launching workers
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
        torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state()}, Path(tmp) / f"rng_rank{rank}.pt")
        ray.train.report({"step": step, "loss": loss}, checkpoint=Checkpoint.from_directory(tmp))


def restore(engine, config: dict[str, Any], rank: int) -> int:
    """Load the latest checkpoint Ray Train hands us (after a worker failure or on --resume); returns the
    step to continue from (0 for a fresh run)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        _, state = engine.load_checkpoint(directory, tag=CHECKPOINT_TAG)
        check_compatible(state, config)
        rng = torch.load(Path(directory) / f"rng_rank{rank}.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
    if rank == 0:
        print(f"resumed from the step-{state['step']} checkpoint", flush=True)
    return int(state["step"])


class InjectedFault(RuntimeError):
    """The failure NEOX_FAIL_AFTER_CHECKPOINT asks for, so tests can stop a run at a known point."""


class ResumeError(RuntimeError):
    """A checkpoint that must not be continued with this config."""


def check_compatible(state: dict[str, Any], config: dict[str, Any]) -> None:
    if state["model_config"] != config["model"]:
        changed = sorted(k for k in config["model"] if state["model_config"].get(k) != config["model"][k])
        raise ResumeError(f"the checkpoint's model differs from the config ({', '.join(changed)}); start a new run name")
    if state["data_fingerprint"] != config["data_fingerprint"] and not config["allow_new_data"]:
        raise ResumeError(
            "the checkpoint was trained on another dataset (fingerprint "
            f"{state['data_fingerprint'][:12]} vs {config['data_fingerprint'][:12]}); pass --allow-new-data to continue "
            "pretraining on the new data"
        )


def export_final(engine, config: dict[str, Any], rank: int, zero_stage: int) -> None:
    """Rank 0 writes the final weights as a neox checkpoint and a Hugging Face directory in the run folder
    (written locally, then published to object storage when the run lives there)."""
    import contextlib

    import deepspeed

    gather = deepspeed.zero.GatheredParameters(list(engine.module.parameters())) if zero_stage == 3 else contextlib.nullcontext()
    with gather:
        if rank == 0:
            from neox.hf import export_hf
            from neox.model.weights import save_model

            storage = config["storage"]
            final = storage.local_dir() / "final"
            model = GPTNeoX(engine.module.cfg)
            model.load_state_dict({k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()})
            save_model(model, final / "model", tokenizer_file=config.get("tokenizer_file"), overwrite=True)
            export_hf(final / "model", final / "hf", overwrite=True)
            storage.publish(final, "final")


def logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line torn by a crash mid-write."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return math.inf


class Tracker:
    """Rank 0's metrics: a line per step in metrics.jsonl, the console and MLflow every log_interval steps.

    metrics.jsonl holds each step of the history behind the current weights once: a run restored from a
    checkpoint drops the lines logged after it (by the attempt that died) before continuing. For a run on object
    storage the file is kept locally and published at each checkpoint and at the end."""

    def __init__(self, config: dict[str, Any], cfg: TrainConfig, mcfg: ModelConfig, world: int, start_step: int):
        from mlflow import MlflowClient

        self.cfg, self.world = cfg, world
        self.client = MlflowClient(tracking_uri=config["mlflow_tracking_uri"])
        self.run_id = config["mlflow_run_id"]
        self.storage = config["storage"]
        self.metrics_path = self.storage.local_dir() / METRICS_FILE
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        earlier = (self.storage.read_text(METRICS_FILE) or "").splitlines()
        self.metrics_path.write_text("".join(line + "\n" for line in earlier if logged_step(line) <= start_step))
        self.metrics_file = open(self.metrics_path, "a")  # noqa: SIM115
        self.window: list[tuple[float, float]] = []
        self.flops = flops_per_step(mcfg, cfg.global_batch_size, cfg.seq_length, cfg.activation_checkpointing)
        self.peak = gpu_peak_tflops() if cfg.use_gpu else None
        self.tokens_per_step = cfg.global_batch_size * cfg.seq_length

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None, scale: float, seconds: float) -> None:
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "loss_scale": scale, "step_time_s": seconds}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        self.window.append((loss, seconds))
        if step % self.cfg.log_interval and step != self.cfg.train_iters:
            return
        mean_time = sum(s for _, s in self.window) / len(self.window)
        metrics = {
            "train/loss": sum(l for l, _ in self.window) / len(self.window),
            "train/lr": lr,
            "train/loss_scale": scale,
            "train/step_time_s": mean_time,
            "train/tokens_per_s": self.tokens_per_step / mean_time,
            "train/samples_per_s": self.cfg.global_batch_size / mean_time,
        }
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        if self.peak is not None:
            tflops = self.flops / mean_time / self.world / 1e12
            metrics["train/tflops_per_gpu"] = tflops
            metrics["train/mfu"] = tflops / self.peak
        self.window = []
        self._log(step, metrics)

    def evaluation(self, step: int, loss: float) -> None:
        self._log(step, {"valid/loss": loss, "valid/perplexity": math.exp(min(loss, 50.0))})

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        print(f"step {step:>6} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)

    def publish(self) -> None:
        self.metrics_file.flush()
        self.storage.publish(self.metrics_path, METRICS_FILE)

    def close(self) -> None:
        self.metrics_file.close()
        self.storage.publish(self.metrics_path, METRICS_FILE)

