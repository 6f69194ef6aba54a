"""A training run's checkpoints: every rank saves its part and Ray Train merges them; a restore loads the newest
one after vetting it against the config; rank 0 also writes the checkpoint's neox state as JSON, which the driver
reads to refuse a resume before any worker starts; and the final weights are exported as a model checkpoint and
a Hugging Face folder. File names come from `neox.pipeline.layout`."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from neox.errors import RunStateError
from neox.pipeline.layout import (
    CHAT_TEMPLATE_FILE,
    DEEPSPEED_TAG,
    FINAL_DIR,
    HF_DIR,
    MODEL_DIR,
    STATE_FILE,
    rng_file,
)
from neox.train.storage import RunStorage


class ResumeError(RunStateError):
    """A checkpoint that must not be continued with this config."""


def client_state(config: dict[str, Any], step: int) -> dict[str, Any]:
    return {"step": step, "data_fingerprint": config["data_fingerprint"], "model_config": config["model"]}


def save_and_report(engine, config: dict[str, Any], rank: int, step: int, loss: float) -> None:
    """Every rank writes its part of the DeepSpeed checkpoint (and its RNG state); Ray Train merges the
    parts into one checkpoint directory in storage."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="neox-ckpt-") as tmp:
        state = client_state(config, step)
        engine.save_checkpoint(tmp, tag=DEEPSPEED_TAG, client_state=state)
        if rank == 0:  # readable without torch, so the driver can vet a resume before launching workers
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
        save_rng(Path(tmp) / rng_file(rank))
        ray.train.report({"step": step, "loss": loss}, checkpoint=Checkpoint.from_directory(tmp))


def restore(engine, config: dict[str, Any], rank: int) -> int:
    """Load the latest checkpoint Ray Train hands us (after a worker failure or on --resume), else the run this
    one continues on new data (`initial_checkpoint`); returns the step to continue from (0 for a fresh run)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("initial_checkpoint"):
        checkpoint = ray.train.Checkpoint(config["initial_checkpoint"], filesystem=config["storage"].filesystem)
    if checkpoint is None:
        return 0
    with checkpoint_folder(checkpoint, config["storage"]) as directory:
        _, state = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
        check_compatible(state, config)
        load_rng(Path(directory) / rng_file(rank))
    if rank == 0:
        print(f"resumed from the step-{state['step']} checkpoint", flush=True)
    return int(state["step"])


@contextlib.contextmanager
def checkpoint_folder(checkpoint, storage: RunStorage):
    """A local folder holding the checkpoint, for every rank of this node. Ray's `as_directory` on a remote
    (S3) checkpoint races between the ranks of one node: one removes the shared download while another still
    checks that it exists. Here the node downloads it once (Ray's `to_directory` locks it) into a folder of the
    run's, removed once every rank has loaded it."""
    import shutil

    import ray.train
    import torch.distributed as dist
    from pyarrow import fs

    if isinstance(checkpoint.filesystem, fs.LocalFileSystem):
        with checkpoint.as_directory() as directory:
            yield directory
        return
    folder = storage.local_dir() / "restore" / Path(checkpoint.path).name
    yield checkpoint.to_directory(str(folder))
    if dist.is_initialized():
        dist.barrier()
    if ray.train.get_context().get_local_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)


def save_rng(path: Path) -> None:
    """This process's torch and numpy RNG state as safetensors (data, never a pickle: run folders are shared)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_rest = json.dumps([name, int(position), int(has_gauss), float(cached).hex()])
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64))}
    save_file(tensors, str(path), metadata={"numpy": numpy_rest})


def load_rng(path: Path) -> None:
    """Restore the RNG state `save_rng` wrote."""
    if not path.is_file():
        raise ResumeError(f"{path} is missing: the checkpoint was written by an older version or not completely")
    try:
        with safe_open(str(path), framework="pt") as saved:
            name, position, has_gauss, cached = json.loads((saved.metadata() or {})["numpy"])
            torch.set_rng_state(saved.get_tensor("torch"))
            keys = saved.get_tensor("numpy").numpy().astype(np.uint32)
        np.random.set_state((name, keys, position, has_gauss, float.fromhex(cached)))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise ResumeError(f"{path} is not a readable RNG state ({type(err).__name__}: {err})") from None


def check_compatible(state: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint of another model shape, or (unless allowed) on another dataset."""
    if state["model_config"] != config["model"]:
        changed = sorted(k for k in config["model"] if state["model_config"].get(k) != config["model"][k])
        raise ResumeError(
            f"the checkpoint's model differs from the config ({', '.join(changed)}); start a new run without --resume"
        )
    if state["data_fingerprint"] != config["data_fingerprint"] and not config["allow_new_data"]:
        raise ResumeError(
            "the checkpoint was trained on another dataset (fingerprint "
            f"{state['data_fingerprint'][:12]} vs {config['data_fingerprint'][:12]}); "
            "pass --allow-new-data to continue pretraining on the new data"
        )


def latest_state(storage: RunStorage) -> dict[str, Any] | None:
    """The neox state (step, data fingerprint, model config) of the run's newest checkpoint, if any."""
    name = newest_checkpoint_name(storage)
    return None if name is None else json.loads(storage.read_text(name, STATE_FILE))


def newest_checkpoint_name(storage: RunStorage) -> str | None:
    """The run's newest checkpoint folder that rank 0 finished writing (its neox state is there), if any."""
    for name in reversed(storage.checkpoints()):
        if storage.read_text(name, STATE_FILE) is not None:
            return name
    return None


def export_final(engine, config: dict[str, Any], rank: int, zero_stage: int, cfg, parallel=None) -> None:
    """Rank 0 writes the final weights as a neox checkpoint and a Hugging Face directory in the run folder
    (written locally, then published to object storage when the run lives there), tensor by tensor: a model split
    over ranks is gathered to rank 0 one tensor at a time, by the ranks of the first replica, and written as it
    comes, so rank 0 never holds the whole model twice."""
    import deepspeed

    if parallel is not None:
        if parallel.pipe_size > 1:
            from neox.train.pipeline import gathered_pipeline

            whole = gathered_pipeline(engine.module, parallel, cfg)
        elif parallel.data_rank == 0:
            from neox.train.tensor_parallel import gathered

            whole = gathered(engine.module, parallel.tensor_group)
        else:
            whole = iter(())
        if rank == 0:
            write_final(cfg, whole, config)
        else:
            for _ in whole:  # the other ranks of the group take part in each gather
                pass
        return
    gather = (
        deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
        if zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if rank == 0:
            from neox.train.lora import merged

            write_final(cfg, merged(engine.module).named_parameters(), config)


def write_final(cfg, tensors: Iterable[tuple[str, torch.Tensor]], config: dict[str, Any]) -> None:
    """The final weights (in the model's order) as a neox checkpoint and a Hugging Face folder, published with the
    run."""
    from neox.model.checkpoint import save_model_streaming
    from neox.model.hf import export_hf

    storage = config["storage"]
    final = storage.local_dir() / FINAL_DIR
    save_model_streaming(cfg, tensors, final / MODEL_DIR, tokenizer_file=config.get("tokenizer_file"), overwrite=True)
    if config.get("chat_template_file"):  # the model answers in the chat format it was fine-tuned on
        shutil.copyfile(config["chat_template_file"], final / MODEL_DIR / CHAT_TEMPLATE_FILE)
    export_hf(final / MODEL_DIR, final / HF_DIR, overwrite=True)
    storage.publish(final, FINAL_DIR)
