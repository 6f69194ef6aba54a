"""`neox plan`: the model states it predicts per rank are the bytes DeepSpeed's engine actually holds on each of two
real ranks (data, tensor and pipeline parallel; fp32 and bf16), and its ranking recommends a layout that fits."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from neox.train.config import build_train_config
from neox.train.plan import GIB, Layout, plan, recommendation, stage_memory, stage_parameters
from tests.conftest import REPO, neox, tiny_config

TINY = str(REPO / "configs" / "model" / "tiny.yml")
NEOX_20B = REPO / "configs" / "pipeline" / "pile-neox-20b.yaml"


def storages(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (ZeRO's parameters are views of one flat buffer)."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def held(engine) -> dict[str, int]:
    """The model states one rank holds, by DeepSpeed's own attributes."""
    optimizer = engine.optimizer
    moments = [v for state in optimizer.optimizer.state.values() for k, v in state.items() if k.startswith("exp_avg")]
    master = getattr(optimizer, "single_partition_of_fp32_groups", None) or optimizer.fp32_groups_flat_partition
    fp32_grads = getattr(optimizer, "fp32_groups_gradients_flat", [])
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None] + list(fp32_grads)
    return {
        "parameters": sum(p.numel() for p in engine.module.parameters()),
        "weights": storages(engine.module.parameters()),
        "gradients": storages(grads),
        "optimizer": storages(moments) + storages(master),
    }


def check_on_rank(rank: int, world: int, rendezvous: str) -> None:
    os.environ["LOCAL_RANK"] = str(rank)  # what Ray Train sets in a worker, and DeepSpeed's engine asks for
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        import deepspeed

        from neox.train.engine import build_engine
        from neox.train.parallel import ModelParallel
        from neox.train.tensor_parallel import vocab_parallel_cross_entropy

        deepspeed.init_distributed("gloo")
        model = tiny_config()
        ids = torch.randint(0, model.vocab_size, (2, 17))
        for tensor, pipe, precision in ((1, 1, "fp32"), (1, 1, "bf16"), (2, 1, "fp32"), (1, 2, "fp32")):
            train = build_train_config(
                {
                    "model": TINY,
                    "num_workers": world,
                    "model_parallel_size": tensor,
                    "pipe_parallel_size": pipe,
                    "micro_batch_size": 2,
                    "gradient_accumulation_steps": 2,
                    "precision": precision,
                    "seq_length": 16,
                }
            )
            parallel = ModelParallel(tensor, pipe) if tensor * pipe > 1 else None
            engine = build_engine(train, model, parallel)
            layout = Layout(tensor, pipe, train.data_parallel_size, 1, 2, 2)
            expected = stage_memory(model, train, layout, 16)[parallel.pipe_rank if parallel else 0]
            label = f"tensor {tensor} pipe {pipe} {precision}"
            if pipe > 1:  # the pipeline engine runs a whole step: its gradients are gone when it returns
                engine.train_batch(iter([(ids[:, :-1], ids[:, 1:])] * 2))
            else:  # a step's first micro-batch: the gradients it accumulates are what the step holds
                logits = engine(ids[:, :-1])
                if parallel is not None:
                    loss = vocab_parallel_cross_entropy(logits, ids[:, 1:], parallel.tensor_group).mean()
                else:
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
                engine.backward(loss)
                assert held(engine)["gradients"] == expected.gradients, label
                engine.step()
                engine.backward(engine(ids[:, :-1]).float().sum())  # finish the step so the optimizer state exists
                engine.step()
            measured = held(engine)
            assert measured["parameters"] == expected.parameters, label
            assert measured["weights"] == expected.weights, label
            assert measured["optimizer"] == expected.optimizer, label
    finally:
        dist.destroy_process_group()


def test_predicted_model_states_are_what_each_rank_holds(tmp_path):
    mp.spawn(check_on_rank, args=(2, f"file://{tmp_path / 'rendezvous'}"), nprocs=2)


def test_stage_parameters_add_up_to_the_model():
    from neox.model.gpt_neox import count_parameters

    cfg = tiny_config(num_layers=5)
    assert sum(stage_parameters(cfg, 1, 1)) == count_parameters(cfg)
    two_stages = stage_parameters(cfg, 1, 2)
    assert sum(two_stages) == count_parameters(cfg) and len(two_stages) == 2
    # tensor slices: the split parameters divide, the LayerNorms and row-parallel biases stay whole on each rank
    whole = 5 * (2 * 64 + 4 * 64) + 2 * 64  # per layer: two biases and two LayerNorms; the final LayerNorm
    assert 2 * stage_parameters(cfg, 2, 1)[0] - whole == count_parameters(cfg)


def test_the_20b_plan_recommends_a_layout_that_fits_and_refuses_what_cannot():
    from neox.model.config import load_model_config
    from neox.train.config import load_train_config

    train = load_train_config(NEOX_20B)
    model, _ = load_model_config(*train.model, vocab_size=50277)
    planned = plan(model, train, 96, 40)
    best = planned[0]
    assert best.fits and best.memory.total(True) <= 40 * GIB * 0.9 and best.layout.zero != 3
    assert best.layout.tensor * best.layout.pipe * best.layout.data == 96
    assert best.layout.micro_batch * best.layout.accumulation * best.layout.data == 1536  # the 20B batch kept
    assert "recommended: tensor" in recommendation(planned, train)
    nothing = plan(model, dataclasses.replace(train, activation_checkpointing=False), 8, 16)
    assert not any(p.fits for p in nothing)
    assert recommendation(nothing, train).startswith("nothing fits")


@pytest.mark.parametrize("gpus", [96])
def test_neox_plan_prints_the_table_and_the_recommendation(gpus):
    out = neox("plan", NEOX_20B, "--gpus", gpus, "--gpu-memory", 80).stdout
    assert out.splitlines()[0].split()[:4] == ["TP", "PP", "DP", "ZeRO"]
    assert "recommended: tensor" in out.splitlines()[-1]
