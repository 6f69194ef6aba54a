"""bench/train_step.py's GPU table: the variants it is told to time are the ones it times, and each engine row is
set against the bare loop with the same kernels ((c)/(b)), across runs that wrote into one folder."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "train_step.py"
spec = importlib.util.spec_from_file_location("train_step_bench", BENCH)
train_step = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(train_step)


def test_a_variant_spec_sets_each_lever_it_names():
    variant = train_step.Variant.parse("engine:ce=liger,ln=liger,rope=liger,adamw=fused,zero=2,mb=32,ckpt,compile")
    assert (variant.cross_entropy, variant.layer_norm, variant.rotary) == ("liger", "liger", "liger")
    assert variant.fused_adamw and variant.activation_checkpointing and variant.compile
    assert (variant.zero_stage, variant.micro_batch) == (2, 32)
    assert train_step.Variant.parse("bare") == train_step.Variant(spec="bare", kind="bare")


@pytest.mark.parametrize("spec", ["hf:ce=liger", "bare:adamw=fused", "engine:ce=fast", "engine:mb=0", "fsdp"])
def test_a_spec_naming_no_such_lever_is_refused(spec):
    with pytest.raises(argparse.ArgumentTypeError):
        train_step.Variant.parse(spec)


def test_the_table_of_runs_into_one_folder_pairs_each_engine_row_with_its_bare_twin_of_the_same_run(tmp_path):
    def row(run, model, variant, tokens_per_s):
        return {
            "run": run,
            "model": model,
            "variant": variant,
            "batch": 16,
            "seq": 2048,
            "ms_per_step": 1.0,
            "tokens_per_s": tokens_per_s,
            "tflops": 1.0,
            "mfu": 0.4,
            "peak_gib": 9.0,
            "first_step_s": 1.0,
        }

    rows_file = tmp_path / "train_step.jsonl"
    first_run = [
        row(1, "pythia-410m", "bare:ce=liger", 1000),
        row(1, "pythia-410m", "engine:ce=liger,adamw=fused", 960),
    ]
    second_run = [row(2, "pythia-1b", "bare:ce=liger", 500), row(2, "pythia-1b", "engine:ce=liger", 400)]
    second_run.append(
        {"run": 2, "model": "pythia-1b", "variant": "engine:mb=64", "batch": 64, "seq": 2048, "error": "OOM"}
    )
    third_run = [row(3, "pythia-410m", "engine:ce=liger", 900)]  # its bare twin ran in another run: no ratio
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in first_run + second_run + third_run))

    table = train_step.markdown_table(train_step.read_rows(rows_file), {"device": "H200", "torch": "2.13.0"})
    assert table.startswith("Measured on device H200, torch 2.13.0.")
    assert "| pythia-1b | `engine:mb=64` | 64 x 2048 | failed: OOM |" in table
    assert "| pythia-410m | `engine:ce=liger` | 16 x 2048 | 1.0 | 900 | 1.0 | 40.0% | 9.0 | - |" in table
    ratios = [line for line in table.splitlines() if line.startswith("- ")]
    assert ratios == [
        "- pythia-410m: `engine:ce=liger,adamw=fused` / `bare:ce=liger` = 0.96",
        "- pythia-1b: `engine:ce=liger` / `bare:ce=liger` = 0.80",
    ]


def test_a_row_whose_loss_is_not_a_number_is_void_and_paired_with_nothing(tmp_path):
    """A kernel that never ran (torch.compile once dropped one) leaves NaN losses and a fast, meaningless step."""
    common = {"batch": 16, "seq": 2048, "tflops": 1.0, "mfu": 0.48, "peak_gib": 9.0, "first_step_s": 1.0}
    rows = [
        {"run": 1, "model": "pythia-410m", "variant": "bare:compile", "ms_per_step": 2.0, "tokens_per_s": 500}
        | common
        | {"loss": 10.9},
        {"run": 1, "model": "pythia-410m", "variant": "engine:compile", "ms_per_step": 1.0, "tokens_per_s": 1000}
        | common
        | {"loss": float("nan")},
    ]
    rows_file = tmp_path / "train_step.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN as JSON writes it, read back as NaN

    table = train_step.markdown_table(train_step.read_rows(rows_file), {"device": "H200"})
    assert "| pythia-410m | `engine:compile` | 16 x 2048 | 1.0 | 1000 | 1.0 | void (loss nan) | 9.0 | nan |" in table
    assert "| pythia-410m | `bare:compile` | 16 x 2048 | 2.0 | 500 | 1.0 | 48.0% | 9.0 | 10.9 |" in table
    assert not [line for line in table.splitlines() if line.startswith("- ")]
    assert "MFU void (loss nan)" in train_step.format_row(train_step.read_rows(rows_file)[1])
