"""The evaluation configs: the eval stage's (`EvalConfig`), the eval-data stage's (`EvalDataConfig`), and the
pipeline config's `eval:` section they come from (`EvalSection`). Light on purpose: `neox check` reads them."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import Field, Strict

from neox.data.dataset import split_weights
from neox.pipeline.configfile import Positive, Str, parse, section

RESPONSE_TASK = "neox_response"  # fine-tuning data: each response scored given its prompt, encoded apart
OFFLINE_TASKS = ("neox_heldout", "neox_lastword", RESPONSE_TASK)
PYTHIA_SUITE = ("lambada_openai", "piqa", "winogrande", "arc_easy", "arc_challenge", "sciq", "logiqa", "hellaswag")


@section
class EvalConfig:
    """The eval stage's config: which tasks, on what, how."""

    tasks: tuple[Str, ...] = OFFLINE_TASKS[:2]
    """Offline tasks (neox_heldout, neox_lastword; neox_response on fine-tuning data) and/or lm-eval task names
    (e.g. the Pythia suite)."""
    batch_size: Positive = 16
    """Requests per forward pass."""
    device: Annotated[str, Strict(), Field(pattern=r"^(cpu|cuda(:\d+)?)$")] = "cpu"
    """cpu, cuda or cuda:N."""
    limit: Positive | None = None
    """Examples per task (default: whole tasks)."""
    model: Literal["neox", "hf"] = "neox"
    """neox: our adapter; hf: lm-eval's own model on the checkpoint's Hugging Face export."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The weights' dtype while evaluating; bfloat16 halves the memory (GPT-NeoX-20B: 41 GB)."""
    ray_address: Str | None = None
    """Run lm-eval as a Ray task on this cluster, holding one GPU when device is cuda."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks names no task")
        if self.model == "hf" and RESPONSE_TASK in self.tasks:
            raise ValueError(
                f"{RESPONSE_TASK} scores each response encoded apart from its prompt, as fine-tuning does, which "
                "the neox model does; lm-eval's hf model moves the prompt's trailing whitespace into the response"
            )


@section
class HeldoutOptions:
    """`eval.data`: the offline task data built from the documents the training split left out."""

    part: Literal["test", "valid"] = "test"  # never train: evaluation data is what training did not read
    """The part of the training run's split to build from: test or valid (never train)."""
    max_documents: Positive = 500
    """Documents to take from that part at most."""
    lastword_chars: Annotated[int, Strict(), Field(ge=20)] = 400
    """Characters of each last-word passage before its target word (keep it within the model's context)."""


@section
class EvalDataConfig(HeldoutOptions):
    """The eval-data stage's config: the options and the training run's split (train.split in a pipeline)."""

    split: Str = "969,30,1"

    def __post_init__(self) -> None:
        split_weights(self.split)  # refuses a split that does not parse


@section
class EvalSection(EvalConfig):
    """`eval:`: lm-eval on each final checkpoint, and (`data:`) the held-out task data it reads."""

    data: HeldoutOptions = HeldoutOptions()


def eval_configs(section: dict[str, Any] | EvalSection | None, split: str) -> tuple[EvalDataConfig, EvalConfig]:
    """The eval-data and eval configs of a pipeline config's `eval:` section; `split` is the training run's,
    so the held-out part is what training left out."""
    parsed = section if isinstance(section, EvalSection) else parse(EvalSection, section, "eval")
    own = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(EvalConfig)}
    options = dataclasses.asdict(parsed.data)
    return parse(EvalDataConfig, {**options, "split": split}, "eval.data"), parse(EvalConfig, own, "eval")
