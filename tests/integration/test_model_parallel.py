"""Model parallelism through real Ray Train + DeepSpeed on the CPU (gloo), four workers on a Ray of four CPU slots:
tensor parallel 2 x data parallel 2, pipeline parallel 2 x data parallel 2, and tensor 2 x pipeline 2 (with fused
AdamW) train the straight data-parallel run's losses and gradient norms at the same global batch and export whole
weights that Hugging Face reads back, as does `neox reshard` from their checkpoints; a tensor-parallel run resumes
bit for bit after a SIGKILL; resuming in another layout is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import neox
from tests.integration.conftest import (
    NEOX,
    STEPS,
    finish,
    free_port,
    launch,
    planned_run,
    ray_start_ports,
    run_folder,
    write_config,
)
from tests.integration.test_train import (
    RAY,
    final_weights,
    kill_group,
    losses,
    records,
    resumed_from,
    steps,
    wait_for_checkpoint,
    wait_for_step,
)

# two workers, one model replica: micro 4 x 2 accumulation steps = the straight run's global batch of 8
TENSOR_PARALLEL = {"model_parallel_size": 2, "gradient_accumulation_steps": 2}


def check_against_straight(run_dir: Path, straight: Path) -> None:
    """The run's 30 losses and gradient norms are the straight data-parallel run's (2 replicas of micro 4; a
    single rank accumulating 2 micro-batches of 4 trains its losses within 2e-7), within 2e-3 relative (the sums'
    order differs); its export is whole: Hugging Face reads it back with the logits of our model of the same
    weights."""
    ours, reference = records(run_dir), records(straight)
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm"):
        worst = max(abs(a[key] - b[key]) / b[key] for a, b in zip(ours, reference, strict=True))
        assert worst < 2e-3, f"largest relative {key} difference {worst:.2e}"
    exported, dense = final_weights(run_dir), final_weights(straight)
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in dense.items()}
    assert all(torch.allclose(exported[k], dense[k], atol=2e-3) for k in dense)
    # the last checkpoint's files of every rank, made whole offline, are the weights the run exported
    neox("reshard", run_dir, "--out", run_dir.parent / "resharded")
    resharded = load_file(run_dir.parent / "resharded" / "model.safetensors")
    assert list(resharded) == list(exported) and all(torch.equal(resharded[k], exported[k]) for k in exported)
    assert (run_dir.parent / "resharded" / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    from neox.model.checkpoint import load_model

    ids = torch.randint(0, 2048, (2, 24))
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(run_dir / "final" / "hf").eval()(ids).logits
        torch.testing.assert_close(theirs, load_model(run_dir / "final" / "model").eval()(ids), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def four_slots():
    """A one-node Ray with four CPU slots on this machine's two cores, so four one-CPU workers fit."""
    short = Path(tempfile.mkdtemp(prefix="r4", dir="/tmp"))  # Ray's socket paths must stay short
    token = short / "token"
    token.write_text("neox-pipeline-test-token-0123456789abcdef")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--include-dashboard=false"]
        + ["--node-ip-address=127.0.0.1", f"--temp-dir={short / 'head'}", *ray_start_ports()],
        env={**os.environ, **auth},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(8)
    try:
        yield f"127.0.0.1:{port}", auth
    finally:
        kill_group(head)
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize(
    "layout",
    [
        {"model_parallel_size": 2},  # 2 replicas of 2 tensor slices: micro 4 x 2 replicas = 8
        {"pipe_parallel_size": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 2},  # 2 x 2 x 2 replicas
        # 4 x 2 x 1 replica; with fused AdamW (train.fused_adamw), which DeepSpeed's pipeline engine steps too
        {"model_parallel_size": 2, "pipe_parallel_size": 2, "gradient_accumulation_steps": 2, "fused_adamw": True},
    ],
    ids=["tensor2-data2", "pipe2-data2", "tensor2-pipe2"],
)
def test_four_workers_in_a_model_parallel_layout_train_the_straight_run(
    tmp_path, tokenized, straight, four_slots, layout
):
    address, auth = four_slots
    config = write_config(tmp_path, tokenized, num_workers=4, ray_address=address, **layout)
    finish(launch(config, env=auth))
    check_against_straight(run_folder(config), straight)


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


def test_resuming_a_run_in_another_layout_is_refused_with_the_way_to_go_on(tmp_path, tokenized, straight):
    """The straight run's checkpoints are cut for two data-parallel workers: resuming it tensor parallel is refused
    before any worker starts, pointing at its exported weights (which `init_from` splits into any layout)."""
    config = write_config(tmp_path, tokenized, **TENSOR_PARALLEL, storage_path=str(straight.parent))
    refused = subprocess.run([NEOX, "train", str(config), "--resume"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "was trained in another layout (model_parallel_size)" in refused.stderr
    assert f"train.init_from: {straight}/final/model" in refused.stderr
