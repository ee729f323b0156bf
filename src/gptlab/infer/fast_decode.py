"""A lean decode step: one new token per row, rows at one length, with little Python per token.

At batch 1 on a CPU a decode step of the `shakespeare_char` model spends about as long in
Python and dispatch as in its 25 matrix-vector products: the model's general cached forward
goes through about 60 module calls, 3-D linears (reshaped to 2-D inside), the cache's
per-step bookkeeping tensors (positions, masks) and views of views. Most of that is only
needed for prompts, padding, rows at different lengths or the rarer architectures. This step
does the common case with the fewest torch calls: 2-D activations (B, C), each linear called
directly, the new keys and values copied into the cache at one slot, and SDPA with no mask.
It reads the model's own parameters (and the cache's own tensors), so nothing is copied and it
computes what `GPT.forward_cached` computes (tests/infer/test_fast_decode.py checks the
logits and greedy tokens).

It covers the dense architectures: learned, rotary or no positions, LayerNorm or RMSNorm,
GELU (exact or tanh), ReLU^2 or SwiGLU MLPs, MHA/GQA/MQA, embedding scaling and logit softcaps.
`supported(cfg)` says whether a model's config is one of them; anything else (sliding windows,
attention sinks, ALiBi, attention softcaps, QK-norm, MoE layers) keeps the general forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.attention import apply_rope
from gptlab.model.config import ModelConfig
from gptlab.model.kv_cache import KVCache

Linear = Callable[[torch.Tensor], torch.Tensor]


def supported(cfg: ModelConfig) -> bool:
    """Whether `FastDecode` computes this architecture (else the engine keeps forward_cached)."""
    dense = all(not cfg.is_moe_layer(i) for i in range(cfg.n_layer))
    full = all(cfg.layer_window(i) is None for i in range(cfg.n_layer))
    return (
        dense
        and full
        and cfg.pos_emb in ("learned", "rope", "none")
        and cfg.mlp in ("gelu", "gelu_tanh", "relu2", "swiglu")
        and cfg.attn_softcap is None
        and not cfg.qk_norm
    )


def _norm(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The norm as one functional call over the last dim (LayerNorm or RMSNorm)."""
    if isinstance(module, nn.LayerNorm):
        shape, w, b, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: F.layer_norm(x, shape, w, b, eps)
    shape, w, eps = module.normalized_shape, module.weight, module.eps
    return lambda x: F.rms_norm(x, shape, w, eps)


def _linear(module: nn.Module) -> Linear:
    """nn.Linear as one F.linear call; another layer (e.g. an int8 one) by its own forward."""
    if type(module) is nn.Linear:
        w, b = module.weight, module.bias
        return lambda x: F.linear(x, w, b)
    return module.forward


class _Layer:
    """One block's pieces as plain callables."""

    def __init__(self, block: nn.Module, cfg: ModelConfig) -> None:
        self.ln_1, self.ln_2 = _norm(block.ln_1), _norm(block.ln_2)
        self.qkv, self.proj = _linear(block.attn.qkv), _linear(block.attn.proj)
        self.fc, self.fc_out = _linear(block.mlp.fc), _linear(block.mlp.proj)
        self.mlp = cfg.mlp

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        if self.mlp == "gelu":
            return F.gelu(h)
        if self.mlp == "gelu_tanh":
            return F.gelu(h, approximate="tanh")
        if self.mlp == "relu2":
            return F.relu(h).square()
        gate, up = h.chunk(2, dim=-1)  # swiglu: (B, 2 d_ff) -> 2 x (B, d_ff)
        return F.silu(gate) * up


class FastDecode:
    """`step(idx, start)`: tokens (B,) at position `start` of rows 0..B-1 of `cache` -> fp32
    logits (B, V). The caller checks that the rows hold `start` tokens each and < capacity,
    and advances their lengths afterwards."""

    def __init__(self, model: nn.Module, cache: KVCache) -> None:
        cfg = model.cfg
        if not supported(cfg):
            raise ValueError("FastDecode does not cover this architecture; use forward_cached")
        self.cfg, self.model, self.cache = cfg, model, cache
        self.layers = [_Layer(b, cfg) for b in model.blocks]
        self.ln_f = _norm(model.ln_f)
        self.wte = model.wte.weight
        self.wpe = model.wpe.weight if cfg.pos_emb == "learned" else None
        self.rotary = model.rotary if cfg.pos_emb == "rope" else None
        self.scale = math.sqrt(cfg.n_embd) if cfg.embed_scale else None
        H, Hkv, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.split = [H * D, Hkv * D, Hkv * D]
        self.gqa = {"enable_gqa": True} if Hkv != H else {}

    def step(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        cfg, cache = self.cfg, self.cache
        B = idx.size(0)
        H, Hkv, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
        x = self.wte[idx]  # (B,) -> (B, C)
        if self.scale is not None:
            x = x * self.scale
        if self.wpe is not None:
            x = x + self.wpe[start]  # (C,) broadcast over the rows
        rope = None
        if self.rotary is not None:
            rope = self.rotary.cos[start : start + 1], self.rotary.sin[start : start + 1]
        end = start + 1
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.ln_1(x)).split(self.split, dim=1)  # (B, (H + 2Hkv) D)
            q = q.view(B, H, 1, D)  # (B, H, 1, D): one query per row
            k = k.view(B, Hkv, 1, D)
            v = v.view(B, Hkv, 1, D)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            kc, vc = cache.k[i][:B], cache.v[i][:B]  # (B, Hkv, S, D) views
            kc[:, :, start:end] = k
            vc[:, :, start:end] = v
            y = F.scaled_dot_product_attention(q, kc[:, :, :end], vc[:, :, :end], **self.gqa)
            x = x + layer.proj(y.view(B, H * D))  # (B, H, 1, D) -> (B, C)
            x = x + layer.fc_out(layer.activation(layer.fc(layer.ln_2(x))))  # (B, C)
        return self.model.logits(self.ln_f(x))  # (B, V), fp32
