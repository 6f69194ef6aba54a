"""Loading training checkpoints without running code from them. A run folder lives on shared storage (FSx, a
bucket) that more than the trainer can write, and a pickle can carry code: DeepSpeed's torch checkpoint engine
loads its files with `weights_only=False`. Ours loads them as weights only, allowing exactly the DeepSpeed types
its files hold besides tensors and plain containers (found by reading every layout our trainer writes on the CPU:
data, tensor and pipeline parallel, ZeRO 1-3, fp32 and bf16; and fp16's loss scaler, read from DeepSpeed's
source), and refuses anything else naming the file."""

from __future__ import annotations

import pickle

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from neox.errors import DataError

# LossScaler in fp32/bf16 ZeRO files, DynamicLossScaler in fp16 ones (loss_scale 0, as engine.py configures fp16)
DEEPSPEED_GLOBALS = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class UnsafeCheckpoint(DataError):
    """A checkpoint file holding objects that loading would have to run code for."""


def load_weights_only(path, map_location=None):
    """`torch.load` of a DeepSpeed checkpoint file, tensors, plain containers and DEEPSPEED_GLOBALS only."""
    try:
        with torch.serialization.safe_globals(DEEPSPEED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        raise UnsafeCheckpoint(
            f"{path} holds objects other than tensors and DeepSpeed's checkpoint state, which loading would have to "
            f"run code for: refused ({refused[0] if refused else 'not a weights-only file'})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:  # truncated, corrupt or not a torch file at all
        raise DataError(f"{path} is not a readable checkpoint file ({type(err).__name__}: {err})") from None


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading weights only (`load_weights_only`)."""

    def load(self, path: str, map_location=None):
        return load_weights_only(path, map_location)


def install(engine) -> None:
    """Make `engine` (a DeepSpeed engine, pipeline or not) load its checkpoints weights only."""
    engine.checkpoint_engine = SafeCheckpointEngine(engine._config)
