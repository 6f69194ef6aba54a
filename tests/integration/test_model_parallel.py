"""Tensor parallelism through real Ray Train + DeepSpeed on the CPU (gloo): two workers holding one model split
Megatron's way train the straight data-parallel run's losses at the same global batch, resume bit for bit after a
SIGKILL, and export whole weights that Hugging Face reads back."""

from __future__ import annotations

import torch

from tests.integration.conftest import STEPS, finish, launch, planned_run, run_folder, write_config
from tests.integration.test_train import (
    final_weights,
    kill_group,
    losses,
    resumed_from,
    steps,
    wait_for_checkpoint,
    wait_for_step,
)

# two workers, one model replica: micro 4 x 2 accumulation steps = the straight run's global batch of 8
TENSOR_PARALLEL = {"model_parallel_size": 2, "gradient_accumulation_steps": 2}


def test_two_tensor_parallel_workers_train_the_data_parallel_losses(tmp_path, tokenized, straight):
    config = write_config(tmp_path, tokenized, **TENSOR_PARALLEL)
    finish(launch(config))
    run_dir = run_folder(config)
    ours, reference = losses(run_dir), losses(straight)
    assert sorted(ours) == list(range(1, STEPS + 1))
    worst = max(abs(ours[s] - reference[s]) / reference[s] for s in reference)
    assert worst < 2e-3, f"largest relative loss difference {worst:.2e}"
    from transformers import AutoModelForCausalLM

    from neox.model.checkpoint import load_model

    ids = torch.randint(0, 2048, (2, 24))
    ours_model = load_model(run_dir / "final" / "model").eval()
    hf = AutoModelForCausalLM.from_pretrained(run_dir / "final" / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours_model(ids), rtol=1e-5, atol=1e-5)
    dense = final_weights(straight)
    assert {k: v.shape for k, v in final_weights(run_dir).items()} == {k: v.shape for k, v in dense.items()}


def test_a_sigkilled_tensor_parallel_run_resumes_bit_for_bit(tmp_path, tokenized):
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    reference = write_config(straight_dir, tokenized, **TENSOR_PARALLEL, train_iters=20)
    finish(launch(reference))
    config = write_config(tmp_path, tokenized, **TENSOR_PARALLEL, train_iters=20)
    run_dir = run_folder(config)
    first = launch(config)
    wait_for_checkpoint(planned_run(config).storage, 10, first)
    wait_for_step(run_dir, 12, first)
    kill_group(first)
    assert resumed_from(finish(launch(config, "--resume"))) in (10, 20)
    assert steps(run_dir) == list(range(1, 21))
    assert losses(run_dir) == losses(run_folder(reference))
    ours, theirs = final_weights(run_dir), final_weights(run_folder(reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
