"""The per-worker training loop that Ray Train runs on every worker: DeepSpeed around our GPT-NeoX.

Global batch `step` holds samples [step * G, (step + 1) * G) of the training dataset; data-parallel rank r reads
its contiguous slice, micro-batch by micro-batch. The position comes from the step alone, so a resumed run
needs no loader state to read exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from neox.data.dataset import build_datasets, inputs_and_targets
from neox.errors import RunStateError
from neox.model.config import ModelConfig
from neox.pipeline.layout import DIVERGED_FILE
from neox.train.checkpointing import export_final, restore, save_and_report
from neox.train.config import TrainConfig
from neox.train.engine import build_engine, effective_zero_stage, loss_scale, micro_batch_loss
from neox.train.parallel import ModelParallel
from neox.train.tracking import Tracker, node_monitor, stop_monitor

FAULT_ENV = "NEOX_FAIL_AFTER_CHECKPOINT"  # a test hook: the step whose checkpoint is followed by a failure


class InjectedFault(RunStateError):
    """The failure NEOX_FAIL_AFTER_CHECKPOINT asks for, so tests can stop a run at a known point."""


def sample_indices(step: int, micro: int, data_rank: int, cfg: TrainConfig) -> np.ndarray:
    """Dataset indices of one micro-batch: data-parallel rank `data_rank`'s slice of global batch `step`,
    micro-batch `micro`."""
    per_rank = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    start = step * cfg.global_batch_size + data_rank * per_rank + micro * cfg.micro_batch_size
    return np.arange(start, start + cfg.micro_batch_size)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch.distributed as dist
    from ray.train.v2._internal.execution import context as train_context

    # DeepSpeed's ZeRO gathers with a torch collective torch now calls deprecated: nothing for us (or users) to change
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated")
    # Ray Train notes each checkpoint report through a logger named by its file's path, which its LoggingConfig
    # level (WARNING, set by launch) does not reach
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)

    cfg = TrainConfig(
        **{**config["train"], "model": tuple(config["train"]["model"]), "betas": tuple(config["train"]["betas"])}
    )  # nested sections (train.lora) come back from their dicts through the dataclass's validation
    mcfg = ModelConfig(**config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    device = torch.device("cuda", ray.train.torch.get_device().index) if cfg.use_gpu else torch.device("cpu")

    tp, pp = cfg.model_parallel_size, cfg.pipe_parallel_size
    parallel = ModelParallel(tp, pp) if tp * pp > 1 else None
    data_rank = parallel.data_rank if parallel is not None else rank  # a model replica's ranks read one batch
    pipelined = pp > 1  # DeepSpeed's pipeline engine runs the micro-batches itself (1F1B)
    engine = build_engine(cfg, mcfg, parallel)
    start_step = restore(engine, config, rank)

    evals = cfg.train_iters // cfg.eval_interval + 1
    datasets = build_datasets(
        config["datasets"],
        cfg.split,
        {"train": cfg.train_iters * cfg.global_batch_size, "valid": evals * cfg.eval_iters * cfg.global_batch_size},
        seq_length=cfg.seq_length,
        seed=cfg.seed,
        cache_dir=config["index_cache"],
    )
    train_set, valid_set = datasets["train"], datasets.get("valid")
    tracker = Tracker(config, cfg, mcfg, world, start_step) if rank == 0 else None
    monitor = node_monitor(config, ctx.get_node_rank(), ctx.get_local_rank())

    def batch(dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [inputs_and_targets(dataset[int(i) % len(dataset)]) for i in indices]
        inputs, targets = (torch.from_numpy(np.stack(part)).to(device) for part in zip(*pairs, strict=True))
        return inputs, targets

    def loss_of(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if pipelined:
            return engine.eval_batch(iter([(inputs, labels)]), num_micro_batches=1)
        group = parallel.tensor_group if parallel is not None else None
        return micro_batch_loss(engine, cfg.cross_entropy, inputs, labels, group)

    def means_over_ranks(*values: torch.Tensor | float) -> list[float]:
        """Each value's mean over every rank, in one all-reduce."""
        stacked = torch.stack([torch.as_tensor(value, dtype=torch.float32, device=device).detach() for value in values])
        dist.all_reduce(stacked)
        return (stacked / world).tolist()

    diverged = None
    try:
        for step in range(start_step, cfg.train_iters):
            started = time.perf_counter()
            engine.train()
            micro_batches = (
                batch(train_set, sample_indices(step, micro, data_rank, cfg))
                for micro in range(cfg.gradient_accumulation_steps)
            )
            if pipelined:
                losses = [engine.train_batch(micro_batches)]  # the mean over the micro-batches, on every stage
            else:
                losses = []
                for inputs, labels in micro_batches:
                    loss = loss_of(inputs, labels)
                    engine.backward(loss)
                    engine.step()
                    losses.append(loss.detach())
            grad_norm = engine.get_global_grad_norm()
            grad_norm = None if grad_norm is None else float(grad_norm)
            bad_norm = float(not math.isfinite(grad_norm or 0.0))
            loss_value, bad_norms = means_over_ranks(torch.stack(losses).mean(), bad_norm)
            seconds = time.perf_counter() - started
            done = step + 1
            # all-reduced, so every rank stops at the same step (a NaN on one rank makes the mean NaN). Under fp16
            # an overflowing gradient is DeepSpeed's loss scaling's to skip; fp32 ZeRO-0 reports no norm (None)
            if not math.isfinite(loss_value) or (cfg.precision != "fp16" and bad_norms > 0):
                diverged = {
                    "step": done,
                    "loss": str(loss_value),
                    "grad_norm": None if grad_norm is None else str(grad_norm),
                }
                break
            if tracker is not None:
                tracker.step(done, loss_value, engine.get_lr()[0], grad_norm, loss_scale(engine), seconds)
            if valid_set is not None and (done % cfg.eval_interval == 0 or done == cfg.train_iters):
                engine.eval()
                with torch.no_grad():
                    valid_losses = []
                    for i in range(cfg.eval_iters):
                        indices = sample_indices((done // cfg.eval_interval) * cfg.eval_iters + i, 0, data_rank, cfg)
                        valid_losses.append(loss_of(*batch(valid_set, indices)))
                (valid,) = means_over_ranks(torch.stack(valid_losses).mean())
                if tracker is not None:
                    tracker.evaluation(done, valid)
            if done % cfg.checkpoint_interval == 0 or done == cfg.train_iters:
                if tracker is not None:
                    tracker.publish()
                save_and_report(engine, config, rank, done, loss_value)
                if os.environ.get(FAULT_ENV) == str(done):
                    raise InjectedFault(f"{FAULT_ENV}={done}: failing on purpose after the step-{done} checkpoint")
        if diverged is None:
            export_final(engine, config, rank, effective_zero_stage(cfg), mcfg, parallel)
        elif rank == 0:
            # returned rather than raised: Ray Train restarts a failed worker group from its newest checkpoint (up
            # to train.max_failures), and a diverged run would only diverge again
            config["storage"].write_text(json.dumps(diverged), DIVERGED_FILE)
    finally:  # after the export (the other ranks wait for rank 0 there) or a divergence, and when a step fails
        stop_monitor(monitor)
        if tracker is not None:
            tracker.close()
