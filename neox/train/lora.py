"""LoRA through `peft`: low-rank adapters on GPT-NeoX's linear layers, the base weights frozen; at the end of
training the adapters are merged into the weights, so the final checkpoint, its Hugging Face export and the
registered model are a plain GPT-NeoX that loads anywhere without peft."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, Strict, field_validator

from neox.pipeline.configfile import Positive, PositiveFloat, Str, section

if TYPE_CHECKING:  # the config section is read by `neox check`, which imports no torch
    from torch import nn

LINEAR_LAYERS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


@section
class LoraConfig:
    """`train.lora`: train low-rank adapters instead of every weight (LoRA); merged into the weights at the end."""

    r: Positive = 8
    """The adapters' rank."""
    alpha: PositiveFloat = 16.0
    """The adapters' scale is alpha / r."""
    dropout: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout on the adapters' input."""
    target_modules: tuple[Str, ...] = LINEAR_LAYERS
    """Linear layers that get adapters, by name: query_key_value, dense (attention output), dense_h_to_4h,
    dense_4h_to_h."""

    @field_validator("target_modules")
    @classmethod
    def one_spelling(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        """Each layer once, in the model's order: the same training then has the same run key."""
        return tuple(n for n in LINEAR_LAYERS if n in names) + tuple(
            dict.fromkeys(n for n in names if n not in LINEAR_LAYERS)
        )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.target_modules) - set(LINEAR_LAYERS))
        if unknown or not self.target_modules:
            raise ValueError(f"target_modules must name some of {', '.join(LINEAR_LAYERS)}, got {unknown or 'none'}")


def with_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """`model` with adapters on its target layers; only the adapters train (peft freezes the rest)."""
    import peft

    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )
    return peft.get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """The plain model with its adapters folded into the weights (the model itself when it has none)."""
    import peft

    return model.merge_and_unload() if isinstance(model, peft.PeftModel) else model
