"""Tensor-parallel layers on two real gloo ranks: the split model's loss and every gradient are the dense model's
(each rank's slice of them), the vocabulary-parallel loss never gathers the logits, and a split that does not
divide is refused."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from neox.model.gpt_neox import initialized
from neox.pipeline.layout import WEIGHTS_FILE
from neox.train.config import build_train_config
from neox.train.engine import initial_model
from neox.train.parallel import ModelParallel
from neox.train.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    TensorParallelGPTNeoX,
    VocabParallelEmbedding,
    gathered,
    load_shards,
    parameters_with_split,
    part_index,
    split_dim,
    vocab_parallel_cross_entropy,
)
from tests.conftest import REPO, tiny_config

VOCAB, HIDDEN, FFN = 16, 8, 12


def dense_model() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "embed": nn.Embedding(VOCAB, HIDDEN),
        "up": nn.Linear(HIDDEN, FFN),
        "down": nn.Linear(FFN, HIDDEN),
        "out": nn.Linear(HIDDEN, VOCAB, bias=False),
    }


def run(modules, ids, target, cross_entropy):
    h = modules["embed"](ids)
    h = modules["down"](F.gelu(modules["up"](h))) + h
    return cross_entropy(modules["out"](h), target).mean()


def check_on_rank(rank: int, world: int, rendezvous: str) -> None:
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        torch.manual_seed(1)
        ids, target = torch.randint(0, VOCAB, (3, 5)), torch.randint(0, VOCAB, (3, 5))
        dense = dense_model()
        dense_loss = run(
            dense, ids, target, lambda logits, t: F.cross_entropy(logits.transpose(1, 2), t, reduction="none")
        )
        dense_loss.backward()

        split = {
            "embed": VocabParallelEmbedding(VOCAB, HIDDEN, None),
            "up": ColumnParallelLinear(HIDDEN, FFN, None),
            "down": RowParallelLinear(FFN, HIDDEN, None),
            "out": ColumnParallelLinear(HIDDEN, VOCAB, None, bias=False),
        }
        for name, module in split.items():
            load_shards(module, lambda p, shape, index, name=name: getattr(dense[name], p).detach()[index])
        logits_seen = []

        def parallel_loss(logits, t):
            logits_seen.append(logits.shape[-1])
            return vocab_parallel_cross_entropy(logits, t, None)

        loss = run(split, ids, target, parallel_loss)
        loss.backward()
        assert logits_seen == [VOCAB // world]  # each rank computes only its slice of the vocabulary
        torch.testing.assert_close(loss, dense_loss, rtol=1e-6, atol=1e-6)
        rows, columns = slice(rank * FFN // world, (rank + 1) * FFN // world), slice(rank * VOCAB // world, None)
        expected = {
            "embed.weight": dense["embed"].weight.grad[rank * VOCAB // world : (rank + 1) * VOCAB // world],
            "up.weight": dense["up"].weight.grad[rows],
            "up.bias": dense["up"].bias.grad[rows],
            "down.weight": dense["down"].weight.grad[:, rows],
            "down.bias": dense["down"].bias.grad,
            "out.weight": dense["out"].weight.grad[columns][: VOCAB // world],
        }
        for name, grad in expected.items():
            module, parameter = name.split(".")
            torch.testing.assert_close(getattr(split[module], parameter).grad, grad, rtol=1e-5, atol=1e-6, msg=name)

        # gathering a column-parallel output gives the dense output, and the input's gradient is the dense one
        x = torch.randn(4, HIDDEN, requires_grad=True)
        gathered = ColumnParallelLinear(HIDDEN, FFN, None, gather_output=True)
        load_shards(gathered, lambda parameter, shape, index: getattr(dense["up"], parameter).detach()[index])
        reference_x = x.detach().clone().requires_grad_()
        torch.testing.assert_close(gathered(x), dense["up"](reference_x))
        gathered(x).pow(2).sum().backward()
        dense["up"](reference_x).pow(2).sum().backward()
        torch.testing.assert_close(x.grad, reference_x.grad)

        with pytest.raises(ValueError, match="does not split over 2 tensor-parallel ranks"):
            ColumnParallelLinear(HIDDEN, 7, None)
    finally:
        dist.destroy_process_group()


def part(layer, name: str) -> tuple[slice, ...]:
    """The index of a rank's part of the dense parameter `name`."""
    short = name.rpartition(".")[2]
    return part_index(layer, short, getattr(layer, short).dim())


def check_model_on_rank(rank: int, world: int, rendezvous: str, weights: str) -> None:
    """The tensor-parallel GPT-NeoX starts from slices of the dense model's weights for the same seed, and its
    loss, gradients and gradient norm are the dense model's, tied or untied, parallel or sequential residual."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        import deepspeed
        from deepspeed.runtime.utils import clip_grad_norm_
        from deepspeed.utils import groups

        deepspeed.init_distributed("gloo")  # takes the process group above, as in a Ray Train worker
        parallel = groups.mpu = ModelParallel(world)
        torch.manual_seed(2)
        ids = torch.randint(0, 256, (2, 12))
        for overrides in ({}, {"no_weight_tying": False, "gpt_j_residual": False}):
            cfg = tiny_config(**overrides)
            dense = initialized(cfg, seed=7)
            split = TensorParallelGPTNeoX(cfg, None, seed=7)
            dense_params = dict(dense.named_parameters())
            assert sorted(dict(split.named_parameters())) == sorted(dense_params)  # the same names

            for name, param, layer, _ in parameters_with_split(split):
                torch.testing.assert_close(param, dense_params[name][part(layer, name)], rtol=0, atol=0)
            # the split dimension by name alone (what reshard reads checkpoints with) is the layers' own
            assert all(dim == split_dim(name) for name, _, _, dim in parameters_with_split(split))
            whole = {name for name, param in split.named_parameters() if param.shape == dense_params[name].shape}
            replicated = ("norm.weight", "norm.bias", "attention.dense.bias", "dense_4h_to_h.bias")
            assert whole == {name for name in dense_params if name.endswith(replicated)}

            logits = dense(ids[:, :-1])
            dense_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            dense_loss.backward()
            local = split(ids[:, :-1])
            assert local.shape[-1] == cfg.vocab_size // world
            loss = vocab_parallel_cross_entropy(local, ids[:, 1:], None).mean()
            loss.backward()
            torch.testing.assert_close(loss, dense_loss, rtol=1e-6, atol=1e-6)
            for name, param, layer, _ in parameters_with_split(split):
                expected = dense_params[name].grad[part(layer, name)]
                torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-6, msg=name)
            # DeepSpeed's gradient clipping, told the groups as the engine tells it, clips by the dense model's norm
            torch.testing.assert_close(
                clip_grad_norm_(list(split.parameters()), 0.01, mpu=parallel),
                torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.01),
            )
            for name, param, layer, _ in parameters_with_split(split):
                expected = dense_params[name].grad[part(layer, name)]
                torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-7, msg=f"clipped {name}")
            # gathered back, the split model is the dense one, tensor for tensor
            whole_again = dict(gathered(split, None))
            assert list(whole_again) == list(dense_params)
            for name, tensor in whole_again.items():
                torch.testing.assert_close(tensor, dense_params[name].detach(), rtol=0, atol=0, msg=name)
        # init_from: each rank reads its slices of a dense checkpoint, tensor by tensor
        train = build_train_config(
            {"model": str(REPO / "configs" / "model" / "tiny.yml"), "init_from": weights, "model_parallel_size": 2}
        )
        cfg = tiny_config()
        from_file = initial_model(train, cfg, parallel)
        dense = initialized(cfg, seed=5)
        dense_params = dict(dense.named_parameters())
        for name, param, layer, _ in parameters_with_split(from_file):
            expected = dense_params[name][part(layer, name)]
            torch.testing.assert_close(param, expected, rtol=0, atol=0, msg=name)
        with pytest.raises(ValueError, match="3 attention heads do not split over 2"):
            TensorParallelGPTNeoX(tiny_config(num_attention_heads=3, hidden_size=48), None)
    finally:
        dist.destroy_process_group()


def test_two_tensor_parallel_ranks_compute_the_dense_loss_and_gradients(tmp_path):
    mp.spawn(check_on_rank, args=(2, f"file://{tmp_path / 'rendezvous'}"), nprocs=2)


def test_the_tensor_parallel_model_is_the_dense_model_split(tmp_path):
    from safetensors.torch import save_file

    save_file(dict(initialized(tiny_config(), seed=5).state_dict()), str(tmp_path / WEIGHTS_FILE))
    mp.spawn(check_model_on_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
