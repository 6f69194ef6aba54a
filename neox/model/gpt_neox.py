"""The GPT-NeoX architecture (Pythia, GPT-NeoX-20B), and nothing else.

Parameter names follow Hugging Face's GPTNeoXForCausalLM without its `gpt_neox.` prefix, so conversion is
a rename. Distributed wrappers, activation checkpointing and compilation are applied from `neox/train/`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from neox.model.config import ModelConfig
from neox.model.rotary import rotary_cos_sin, rotate_query_key


class KVCache:
    """Preallocated keys/values for incremental decoding: one (batch, heads, max_length, head_size) pair per
    layer, filled in place so each new token costs no copy of the past."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_length: int, dtype: torch.dtype, device: torch.device):
        shape = (batch_size, cfg.num_attention_heads, max_length, cfg.head_size)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.length = 0  # positions already filled, in every layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            raise ValueError(f"KV cache holds {self.keys[layer].shape[2]} positions; {end} requested")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_size = cfg.head_size
        self.dropout = cfg.attention_dropout
        # Fused projection, per-head interleaved: output rows are [h0:(q,k,v), h1:(q,k,v), ...].
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.rotary = rotate_query_key  # (q, k, cos, sin) -> (q, k); a fused kernel may take its place in training

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, layer: int
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        qkv = self.query_key_value(x).view(batch, seq, self.num_heads, 3 * self.head_size)
        # Split before moving heads ahead of positions: the split's backward then joins the three gradients
        # straight into the projection's (batch, seq, heads, 3 * head_size) layout, where the other order joined
        # them head-major and copied the result again.
        q, k, v = (t.transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        q, k = self.rotary(q, k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        if past == 0:
            mask, causal = None, True
        elif seq == 1:
            mask, causal = None, False  # one new token sees every cached position
        else:
            mask, causal = torch.ones(seq, past + seq, dtype=torch.bool, device=x.device).tril(past), False
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        # heads * head_size: the hidden size, or this rank's share of it under tensor parallelism
        return self.dense(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.dense_4h_to_h = nn.Linear(cfg.ffn_size, cfg.hidden_size)
        self.approximate = cfg.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=self.approximate))


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.parallel_residual = cfg.gpt_j_residual
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.attention = Attention(cfg)
        self.mlp = MLP(cfg)
        self.hidden_dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        attn = self.hidden_dropout(self.attention(self.input_layernorm(x), cos, sin, cache, layer))
        if self.parallel_residual:  # GPT-J style: x + attn(ln1(x)) + mlp(ln2(x))
            return x + attn + self.hidden_dropout(self.mlp(self.post_attention_layernorm(x)))
        h = x + attn
        return h + self.hidden_dropout(self.mlp(self.post_attention_layernorm(h)))


# A function of the final hidden states (batch, seq, hidden) and the output layer's weight (vocab, hidden) computed
# in place of the output layer: a loss fused with that layer, so the full logits never exist
Head = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GPTNeoX(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_in = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.emb_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.embed_out = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) if cfg.no_weight_tying else None

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, head: Head | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) for input_ids (batch, seq); with a cache, positions continue after it.
        `head`: what it returns instead of the logits (a fused loss). It runs inside the forward so that a wrapper
        of the model sees it as the model's output: DeepSpeed's engine clears the gradients when its backward
        reaches the module's output, which wiped the output layer's gradient of a loss computed outside."""
        start = cache.length if cache is not None else 0
        cos, sin = rotary_cos_sin(
            self.cfg.rotary_ndims, self.cfg.rotary_emb_base, start, input_ids.shape[1], input_ids.device
        )
        x = self.emb_dropout(self.embed_in(input_ids))
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += input_ids.shape[1]
        x = self.final_layer_norm(x)
        return self.output_layer(x) if head is None else run_eagerly(head, x, self.output_weight)

    @property
    def output_weight(self) -> nn.Parameter:
        """The output layer's weight (vocab, hidden): `embed_out`, or the input embedding for a tied model."""
        return self.embed_out.weight if self.embed_out is not None else self.embed_in.weight

    def output_layer(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the final hidden states."""
        return F.linear(x, self.output_weight)


@torch.compiler.disable  # the fused losses as measured, outside the compiled graph (liger-kernel's syncs on .item())
def run_eagerly(head: Head, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return head(hidden, weight)


def init_std(method: str, cfg: ModelConfig) -> float:
    """Standard deviation of GPT-NeoX's named init methods."""
    match method:
        case "normal":
            return cfg.init_method_std
        case "scaled_normal":
            return cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers)
        case "small_init":  # Nguyen & Salazar 2019
            return math.sqrt(2.0 / (5.0 * cfg.hidden_size))
        case "wang_init":  # Wang 2021, as in GPT-J / GPT-NeoX
            return 2.0 / (cfg.num_layers * math.sqrt(cfg.hidden_size))
    raise ValueError(f"unknown init method {method!r}")


def init_parameter(cfg: ModelConfig, name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The whole of parameter `name` as GPT-NeoX initialises it: `init_method` for embeddings, QKV, the MLP input
    and the output layer; `output_layer_init_method` for the two projections that write into the residual stream;
    zero biases, unit LayerNorms. Each parameter draws from a generator of its own, seeded from the run's seed and
    its name, so its values do not depend on the other parameters, their order, or which slice of it a rank holds
    (tensor and pipeline parallel layouts start from the same weights)."""
    if "layernorm" in name or "layer_norm" in name:
        return torch.full(shape, 1.0 if name.endswith("weight") else 0.0)
    if name.endswith("bias"):
        return torch.zeros(shape)
    method = cfg.output_layer_init_method if name.endswith(OUTPUT_PROJECTIONS) else cfg.init_method
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)  # a 63-bit seed
    return torch.empty(shape).normal_(0.0, init_std(method, cfg), generator=generator)


OUTPUT_PROJECTIONS = ("attention.dense.weight", "dense_4h_to_h.weight")


@torch.no_grad()
def init_weights(model: GPTNeoX, seed: int = 0) -> GPTNeoX:
    """Initialise every parameter of `model` in place (`init_parameter`)."""
    for name, param in model.named_parameters():
        param.copy_(init_parameter(model.cfg, name, tuple(param.shape), seed))
    return model


def initialized(cfg: ModelConfig, seed: int = 0) -> GPTNeoX:
    """A fresh model for `seed`, built on the meta device and materialised once (not allocated and then
    overwritten)."""
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    return init_weights(model.to_empty(device="cpu"), seed)


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` describes, counted on the meta device (no memory allocated).
    A tied output layer counts once."""
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    return sum(p.numel() for p in model.parameters())
