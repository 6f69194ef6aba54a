"""Checkpoints are read back weights only: what our trainer writes (every ZeRO stage) loads, and a pickle planted
in a checkpoint is refused naming the file, without running (the payload would write a marker file)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neox.errors import DataError, RunStateError
from neox.train.checkpointing import load_rng, save_rng
from neox.train.safe_load import UnsafeCheckpoint, load_weights_only
from tests.conftest import REPO, Payload, tiny_config


def check_in_process(rank: int, folder: str) -> None:
    os.environ["LOCAL_RANK"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=0, world_size=1)
    try:
        from neox.train.config import build_train_config
        from neox.train.engine import build_engine

        model = tiny_config()
        ids = torch.randint(0, model.vocab_size, (2, 17))
        configs = {
            stage: build_train_config(
                {"model": str(REPO / "configs" / "model" / "tiny.yml"), "num_workers": 1, "zero_stage": stage}
                | {"precision": "bf16", "micro_batch_size": 2}
            )
            for stage in (1, 2, 3)
        }
        for stage, train in configs.items():
            engine = build_engine(train, model)
            engine.backward(engine(ids[:, :-1]).float().mean())
            engine.step()
            saved = f"{folder}/zero{stage}"
            engine.save_checkpoint(saved, tag="t")
            build_engine(train, model).load_checkpoint(saved, tag="t")  # what the trainer wrote loads
        planted = f"{folder}/zero1/t/mp_rank_00_model_states.pt"
        torch.save({"module": Payload(f"{folder}/ran")}, planted)
        with pytest.raises(UnsafeCheckpoint, match="mp_rank_00_model_states.pt holds objects other than tensors"):
            build_engine(configs[1], model).load_checkpoint(f"{folder}/zero1", tag="t")
        assert not os.path.exists(f"{folder}/ran")
    finally:
        dist.destroy_process_group()


def test_every_zero_stage_loads_weights_only_and_a_planted_pickle_is_refused_unrun(tmp_path):
    mp.spawn(check_in_process, args=(str(tmp_path),), nprocs=1)


def test_a_planted_pickle_is_refused_wherever_it_is_read(tmp_path):
    torch.save(Payload(str(tmp_path / "ran")), tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpoint, match=r"evil.pt holds objects other than tensors.*Unsupported global"):
        load_weights_only(tmp_path / "evil.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:50])
    with pytest.raises(DataError, match="cut.pt is not a readable checkpoint file"):
        load_weights_only(tmp_path / "cut.pt")
    torch.save(Payload(str(tmp_path / "ran")), tmp_path / "rng_rank0.safetensors")  # in place of the RNG state
    with pytest.raises(RunStateError, match="rng_rank0.safetensors is not a readable RNG state"):
        load_rng(tmp_path / "rng_rank0.safetensors")
    assert not (tmp_path / "ran").exists()


def test_the_rng_state_round_trips_as_data(tmp_path):
    import numpy as np

    torch.manual_seed(3)
    np.random.seed(4)
    save_rng(tmp_path / "rng.safetensors")
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(5)
    np.random.seed(6)
    load_rng(tmp_path / "rng.safetensors")
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


def test_fp16s_dynamic_loss_scaler_loads_as_deepspeed_writes_it(tmp_path):
    """fp16 (the Pythia and 20B YAMLs' precision) does not run on this CPU, so its ZeRO optimizer state is written
    here as DeepSpeed's stage_1_and_2 writes it: the loss scaler object beside the tensors."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler, DynamicLossScaler

    dynamic = {"init_scale": 2**16, "scale_window": 1000, "min_scale": 1, "delayed_shift": 2}
    scaler = CreateLossScaler(torch.half, 0, True, dynamic | {"consecutive_hysteresis": False})
    torch.save({"loss_scaler": scaler, "dynamic_loss_scale": True, "overflow": False}, tmp_path / "optim.pt")
    back = load_weights_only(tmp_path / "optim.pt")["loss_scaler"]
    assert type(back) is DynamicLossScaler and vars(back) == vars(scaler)
