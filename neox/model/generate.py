"""Autoregressive generation with the KV cache: greedy, or sampling with temperature, top-k and top-p."""

from __future__ import annotations

import dataclasses
import math

import torch

from neox.errors import ConfigError
from neox.model.gpt_neox import GPTNeoX, KVCache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0  # 1 means no nucleus filter
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:  # also refuses nan
            raise ConfigError(f"temperature must be >= 0 and finite, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest set with probability mass >= top_p to -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the most likely token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token id (batch,) from last-position logits (batch, vocab)."""
    if cfg.temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: GPTNeoX, input_ids: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Continue each row of input_ids (batch, prompt_len) by up to cfg.max_new_tokens tokens.

    Returns (batch, prompt_len + n). A row that emits eos is padded with eos until every row has.
    """
    model.eval()
    batch, prompt_len = input_ids.shape
    total = prompt_len + cfg.max_new_tokens
    if total > model.cfg.max_position_embeddings:
        raise ConfigError(
            f"prompt ({prompt_len}) + max_new_tokens ({cfg.max_new_tokens}) exceeds the model's "
            f"max_position_embeddings ({model.cfg.max_position_embeddings})"
        )
    param = next(model.parameters())
    cache = KVCache(model.cfg, batch, total, param.dtype, param.device)
    tokens = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    step_input = input_ids
    for _ in range(cfg.max_new_tokens):
        logits = model(step_input, cache)[:, -1, :]
        new = next_token(logits, cfg, generator)
        if cfg.eos_token_id is not None:
            new = new.masked_fill(finished, cfg.eos_token_id)
            finished |= new == cfg.eos_token_id
        tokens = torch.cat((tokens, new[:, None]), dim=1)
        if finished.all():
            break
        step_input = new[:, None]
    return tokens
