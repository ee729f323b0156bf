"""Parameter and FLOP counts agree with what a built model actually holds and multiplies."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from gptlab.model.accounting import (
    build_meta,
    count_params,
    flops_per_token,
    matmul_params_per_token,
)
from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.model.moe import MoE

BASE = dict(n_layer=2, n_head=4, n_embd=32, seq_len=16, vocab_size=50)

CONFIGS = {
    "gpt2": {},
    "no_bias": {"bias": False},
    "gqa_swiglu_rope": {"n_kv_head": 2, "mlp": "swiglu", "pos_emb": "rope", "bias": False},
    "untied_unpadded": {"tie_embeddings": False, "vocab_multiple": 1},
    "qk_norm_rmsnorm": {"qk_norm": True, "norm": "rmsnorm", "mlp": "relu2"},
    "mtp": {"mtp_heads": 2, "bias": False},
    "moe": {"moe": MoEConfig(n_experts=4, top_k=2), "bias": False},
    "moe_shared_bias": {
        "moe": MoEConfig(n_experts=4, top_k=1, n_shared_experts=1, d_expert=24, every=2),
        "mlp": "swiglu",
    },
}


def make_cfg(name: str) -> ModelConfig:
    return ModelConfig(**(BASE | CONFIGS[name]))


def moe_layers(model: GPT) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


@pytest.mark.parametrize("name", CONFIGS)
def test_total_counts_every_parameter_once(name):
    model = build_meta(make_cfg(name))
    unique = {id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    counts = count_params(model)
    assert counts.total == sum(unique.values())
    all_entries = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    shared = model.wte.weight.numel() if model.cfg.tie_embeddings else 0
    assert counts.total == all_entries - shared  # a tied matrix is counted once
    assert counts.embedding == (
        (model.wpe.weight.numel() if hasattr(model, "wpe") else 0)
        + (0 if model.cfg.tie_embeddings else model.wte.weight.numel())
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_active_params_skip_unchosen_experts(name):
    model = build_meta(make_cfg(name))
    counts = count_params(model)
    inactive = 0
    for moe in moe_layers(model):
        stacks = [moe.w_in, moe.w_out] + [
            getattr(moe, b) for b in ("b_in", "b_out") if hasattr(moe, b)
        ]
        per_expert = sum(p.numel() for p in stacks) // moe.n_experts
        inactive += (moe.n_experts - moe.top_k) * per_expert
    assert counts.active == counts.total - inactive
    if model.cfg.moe.enabled:
        assert counts.active < counts.total
    else:
        assert counts.active == counts.total


@pytest.mark.parametrize("name", CONFIGS)
def test_matmul_params_match_the_linear_layers(name):
    """Every nn.Linear weight a token passes through (blocks, MTP heads, lm_head once per head),
    plus top_k experts of each MoE stack; biases and lookups are not matmuls."""
    cfg = make_cfg(name)
    model = build_meta(cfg)
    linears = sum(
        m.weight.numel()
        for part in (model.blocks, model.mtp)
        for m in part.modules()
        if isinstance(m, nn.Linear)
    )
    experts = sum(
        moe.top_k * (moe.w_in[0].numel() + moe.w_out[0].numel()) for moe in moe_layers(model)
    )
    heads = (1 + cfg.mtp_heads) * model.lm_head.weight.numel()  # padded rows included
    per_token = linears + experts + heads
    assert matmul_params_per_token(cfg) == per_token
    # 2 FLOPs per multiply-add, plus QK^T and AV over T keys per layer; x3 for fwd + bwd
    n_attn = cfg.n_layer + cfg.mtp_heads
    attn = n_attn * 2 * 2 * cfg.n_head * cfg.head_dim * cfg.seq_len
    assert flops_per_token(cfg) == 3 * (2 * per_token + attn)


def test_windowed_attention_costs_fewer_flops():
    cfg = ModelConfig(**BASE | {"seq_len": 64})
    full = flops_per_token(cfg)
    half = flops_per_token(dataclasses.replace(cfg, window=16, window_pattern="SL"))
    slide = flops_per_token(dataclasses.replace(cfg, window=16))
    assert slide < half < full
    C = cfg.n_layer * 2 * 2 * cfg.n_head * cfg.head_dim * 3  # FLOPs per attended key, all layers
    assert full - slide == C * (64 - 16)
    # a window longer than the context costs the same as full attention
    assert flops_per_token(dataclasses.replace(cfg, window=1000)) == full
    # counting over a shorter sequence counts fewer keys
    assert flops_per_token(cfg, seq_len=32) < full


@pytest.mark.parametrize("name", ["gpt2", "moe_shared_bias", "mtp"])
def test_build_meta_has_the_real_shapes(name):
    cfg = make_cfg(name)
    meta = build_meta(cfg)
    assert all(p.device.type == "meta" for p in meta.parameters())
    real = GPT(cfg)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }
    assert count_params(meta) == count_params(real)
