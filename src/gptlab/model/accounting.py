"""Counting parameters and FLOPs for any ModelConfig (MFU and `gptlab info` use these).

Parameters are counted on a built model (on the meta device that costs no memory or time).
FLOPs come from the config: 2 FLOPs per multiply-add of every weight matrix a token passes
through (MoE: only the router, the top-k experts and the shared experts), plus attention's
QK^T and AV (2 * 2 * D per head per attended key), times 3 for forward + backward. Keys per
query are counted as the full context T (or the window), the convention of PaLM and nanoGPT.
"""

from __future__ import annotations

import dataclasses

import torch

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.model.layers import mlp_params


def build_meta(cfg: ModelConfig) -> GPT:
    """The model with shapes only (no memory, instant even for GPT-2 XL)."""
    with torch.device("meta"):
        return GPT(cfg)


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    total: int  # every parameter once (tied matrices once)
    active: int  # used per token: MoE counts only top_k routed experts
    embedding: int  # lookup tables: token (if untied) and learned position embeddings

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_params(model: GPT) -> ParamCounts:
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    if cfg.moe.enabled:
        per_expert = mlp_params(cfg, cfg.expert_width)
        n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layer))
        inactive = n_moe * (cfg.moe.n_experts - cfg.moe.top_k) * per_expert
    embedding = model.wpe.weight.numel() if hasattr(model, "wpe") else 0
    if not cfg.tie_embeddings:  # an untied token table is a pure lookup
        embedding += model.wte.weight.numel()
    return ParamCounts(total=total, active=total - inactive, embedding=embedding)


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weight-matrix entries one token multiplies through, forward (lm_head and MTP included)."""
    C, D = cfg.n_embd, cfg.head_dim

    def block(moe: bool) -> int:
        attn = C * (cfg.n_head + 2 * cfg.kv_heads) * D + C * C
        if not moe:
            return attn + mlp_params(cfg, cfg.ff_width, bias=False)
        d, n_shared = cfg.expert_width, cfg.moe.n_shared_experts
        expert = mlp_params(cfg, d, bias=False)
        shared = mlp_params(cfg, n_shared * d, bias=False) if n_shared else 0
        return attn + C * cfg.moe.n_experts + cfg.moe.top_k * expert + shared

    head = C * cfg.padded_vocab
    trunk = sum(block(cfg.is_moe_layer(i)) for i in range(cfg.n_layer))
    return trunk + head + cfg.mtp_heads * (block(False) + head)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward = 3x forward), attention included."""
    T = seq_len or cfg.seq_len
    layers = [cfg.layer_window(i) for i in range(cfg.n_layer)]
    layers += [cfg.layer_window(cfg.n_layer - 1)] * cfg.mtp_heads
    attn = sum(2 * 2 * cfg.n_head * cfg.head_dim * min(T, w or T) for w in layers)
    return 3 * (2 * matmul_params_per_token(cfg) + attn)
