"""The CPU bf16 attention kernel: it computes causal attention, and the layers that the model
says run it (what the memory plan counts) are the layers that do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptlab.model import cpu_bf16_attention
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT

CPU, BF16 = torch.device("cpu"), torch.bfloat16


def test_kernel_matches_fp32_sdpa_forward_and_backward():
    """Forward and all three gradients agree with fp32 causal SDPA on the same bf16 inputs, to
    bf16 precision."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 24, 16, generator=g).bfloat16() for _ in range(3))
    dy = torch.randn(2, 3, 24, 16, generator=g).bfloat16()
    results = []
    for run in (
        lambda q, k, v: cpu_bf16_attention.CpuCausalAttention.apply(q, k, v).float(),
        lambda q, k, v: F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                       is_causal=True),
    ):  # fmt: skip
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        y = run(*leaves)
        y.backward(dy.float())
        results.append([y.detach(), *(t.grad.float() for t in leaves)])
    for ours, ref, name in zip(*results, ["y", "dq", "dk", "dv"], strict=True):
        torch.testing.assert_close(ours, ref, atol=3e-2, rtol=3e-2, msg=name)


def test_grouped_query_heads_share_their_key_value_head():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 8, 16, generator=g).bfloat16()
    k, v = (torch.randn(1, 2, 8, 16, generator=g).bfloat16() for _ in range(2))
    y = cpu_bf16_attention.causal_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                         enable_gqa=True)  # fmt: skip
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(
    ("extra", "kernels"),
    [
        ({}, ["cpu_bf16", "cpu_bf16"]),
        ({"n_kv_head": 1}, ["cpu_bf16", "cpu_bf16"]),
        ({"window": 4, "window_pattern": "SL"}, ["sdpa_fp32", "cpu_bf16"]),  # layer 0 windowed
        ({"dropout": 0.1}, ["sdpa_fp32", "sdpa_fp32"]),  # the kernel has no attention dropout
        ({"pos_emb": "alibi"}, ["sdpa_fp32", "sdpa_fp32"]),
        ({"doc_mask": True}, ["sdpa_fp32", "sdpa_fp32"]),
        ({"attn_softcap": 5.0}, ["math", "math"]),
        ({"attn_backend": "math"}, ["math", "math"]),
    ],
)
def test_model_reports_the_kernels_its_forward_runs(monkeypatch, extra, kernels):
    """Under CPU bf16 autocast, `attention_kernels` (what the memory plan counts) names the
    kernel each layer's training forward really runs, and the loss stays close to fp32's."""
    calls = []
    apply = cpu_bf16_attention.CpuCausalAttention.apply
    monkeypatch.setattr(cpu_bf16_attention.CpuCausalAttention, "apply",
                        lambda *a: calls.append(1) or apply(*a))  # fmt: skip
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40, **extra)
    torch.manual_seed(0)
    model = GPT(cfg).train()
    assert model.attention_kernels(CPU, BF16, 16) == kernels
    assert not {"cpu_bf16", "sdpa_fp32"} & set(model.attention_kernels(CPU, torch.float32, 16))
    g = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(40, (2, 16), generator=g) for _ in range(2))
    starts = torch.zeros(2, 16, dtype=torch.bool) if cfg.doc_mask else None
    if starts is not None:
        starts[:, [0, 7]] = True
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=BF16):
        loss, _ = model(idx, targets, doc_starts=starts)
    loss.backward()
    assert len(calls) == kernels.count("cpu_bf16")
    torch.manual_seed(0)  # the same dropout masks
    ref, _ = model(idx, targets, doc_starts=starts)
    if cfg.dropout == 0:
        torch.testing.assert_close(loss.float(), ref, atol=5e-2, rtol=2e-2)


def test_long_contexts_keep_sdpa(monkeypatch):
    """Past MAX_T tokens the kept T x T scores would cost too much: SDPA in fp32 instead."""
    monkeypatch.setattr(cpu_bf16_attention, "MAX_T", 8)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40))
    assert model.attention_kernels(CPU, BF16, 8) == ["cpu_bf16"] * 2
    assert model.attention_kernels(CPU, BF16, 16) == ["sdpa_fp32"] * 2
