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
    """The norm as one call over the last dim (LayerNorm or RMSNorm): torch's op itself, as
    F.layer_norm calls it, without the wrapper's per-call checks (a few us each, 13 a step)."""
    if isinstance(module, nn.LayerNorm):
        shape, w, b, eps = module.normalized_shape, module.weight, module.bias, module.eps
        cudnn = torch.backends.cudnn.enabled
        return lambda x: torch.layer_norm(x, shape, w, b, eps, cudnn)
    shape, w, eps = module.normalized_shape, module.weight, module.eps
    return lambda x: torch.rms_norm(x, shape, w, eps)


def _linear(module: nn.Module) -> Linear:
    """nn.Linear as one mm (addmm with a bias) on its weight's transposed view: what F.linear
    ends in for 2-D input, minus three dispatcher hops (linear, t, matmul) per call; another
    layer (e.g. an int8 one) by its own forward."""
    if type(module) is nn.Linear:
        wt, b = module.weight.t(), module.bias  # (in, out) view
        if b is None:
            return lambda x: torch.mm(x, wt)
        return lambda x: torch.addmm(b, x, wt)
    return module.forward


def _residual_linear(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x, y) -> x + module(y). For nn.Linear one addmm (the residual add rides in the
    product: one kernel fewer per call), its bias, if any, added to the fresh result."""
    if type(module) is nn.Linear:
        wt, b = module.weight.t(), module.bias  # (in, out) view: addmm's mat2
        if b is None:
            return lambda x, y: torch.addmm(x, y, wt)
        return lambda x, y: torch.addmm(x, y, wt).add_(b)
    return lambda x, y: x + module(y)


class _Layer:
    """One block's pieces as plain callables."""

    def __init__(self, block: nn.Module, cfg: ModelConfig) -> None:
        self.ln_1, self.ln_2 = _norm(block.ln_1), _norm(block.ln_2)
        self.qkv = _linear(block.attn.qkv)
        self.fc = _linear(block.mlp.fc)
        self.add_proj = _residual_linear(block.attn.proj)  # x + proj(y)
        self.add_fc_out = _residual_linear(block.mlp.proj)  # x + fc_out(h)
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
        self.head = self._head(model)
        self.wte = model.wte.weight
        self.wpe = model.wpe.weight if cfg.pos_emb == "learned" else None
        self.rotary = model.rotary if cfg.pos_emb == "rope" else None
        self.scale = math.sqrt(cfg.n_embd) if cfg.embed_scale else None
        H, Hkv, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.split = [H * D, Hkv * D, Hkv * D]
        self.gqa = {"enable_gqa": True} if Hkv != H else {}
        self._views: tuple[object, int, list] | None = None  # the cache's per-layer rows 0..B-1

    @staticmethod
    def _head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """Final hidden states (B, C) -> fp32 logits (B, V): GPT.logits, with a plain fp32
        head as one mm and a slice (no module call, no cast)."""
        head, cfg = model.lm_head, model.cfg
        if (
            type(head) is not nn.Linear
            or head.weight.dtype != torch.float32
            or cfg.logit_softcap is not None
        ):
            return model.logits
        wt, V = head.weight.t(), cfg.vocab_size
        return lambda h: torch.mm(h, wt)[:, :V]

    def _cache_rows(self, B: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views (B, Hkv, S, D) of every layer's keys and values, rows 0..B-1, made once per
        batch size (KVCache allocates its tensors once, in its constructor)."""
        k, v = self.cache.k, self.cache.v
        if self._views is None or self._views[0] is not k or self._views[1] != B:
            self._views = (k, B, [(k[i][:B], v[i][:B]) for i in range(len(k))])
        return self._views[2]

    def step(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        cfg = self.cfg
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
        for layer, (kc, vc) in zip(self.layers, self._cache_rows(B), strict=True):
            qkv = layer.qkv(layer.ln_1(x))  # (B, (H + 2 Hkv) D)
            if Hkv == H:  # q, k, v as three views in one call: (B, 3, H, 1, D) -> 3 x (B, H, 1, D)
                q, k, v = qkv.view(B, 3, H, 1, D).unbind(1)
            else:
                q, k, v = qkv.split(self.split, dim=1)
                q, k, v = q.view(B, H, 1, D), k.view(B, Hkv, 1, D), v.view(B, Hkv, 1, D)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            kc.narrow(2, start, 1).copy_(k)  # this step's keys and values into their slot
            vc.narrow(2, start, 1).copy_(v)
            y = F.scaled_dot_product_attention(
                q, kc.narrow(2, 0, end), vc.narrow(2, 0, end), **self.gqa
            )
            x = layer.add_proj(x, y.view(B, H * D))  # x + proj(y): (B, C)
            x = layer.add_fc_out(x, layer.activation(layer.fc(layer.ln_2(x))))  # (B, C)
        return self.head(self.ln_f(x))  # (B, V), fp32
