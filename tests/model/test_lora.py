"""LoRA (model/lora.py): only adapters train, a fresh adapter changes nothing, merging keeps the
logits, the adapter state round-trips, and bad targets are one clear line."""

from __future__ import annotations

import pytest
import torch

from gptlab.model.config import LoRAConfig, ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.model.lora import (
    adapter_state,
    apply_lora,
    is_adapter,
    load_adapter_state,
    merge_lora,
)

GPT2_STYLE = dict(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40)
LLAMA_STYLE = dict(
    n_layer=2, n_head=4, n_kv_head=2, n_embd=32, seq_len=16, vocab_size=40, pos_emb="rope",
    norm="rmsnorm", mlp="swiglu", bias=False,
)  # fmt: skip
STYLES = pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])


def _model(style: dict) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**style)).eval()


def _perturb_b(model: GPT, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _x() -> torch.Tensor:
    return torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))


@STYLES
def test_fresh_adapters_change_nothing_and_keep_base_names(style):
    model = _model(style)
    before = model(_x())
    base_names = set(model.state_dict())
    adapted = apply_lora(model, LoRAConfig(rank=4, targets="all"), torch.Generator())
    assert len(adapted) == 4 * 2  # qkv, proj, fc, proj per block
    names = set(model.state_dict())
    assert base_names <= names  # e.g. blocks.0.attn.qkv.weight kept
    assert all(is_adapter(n) for n in names - base_names)
    assert "blocks.0.attn.qkv.lora_A_q" in names and "blocks.1.attn.proj.lora_B" in names
    torch.testing.assert_close(model(_x()), before, atol=0, rtol=0)


def test_swiglu_gate_and_up_get_their_own_adapters():
    model = _model(LLAMA_STYLE)
    apply_lora(model, LoRAConfig(rank=2, targets="mlp_in,k"))
    shapes = {n: tuple(t.shape) for n, t in adapter_state(model).items()}
    F = model.cfg.ff_width
    assert shapes["blocks.0.mlp.fc.lora_A_gate"] == (2, 32)
    assert shapes["blocks.0.mlp.fc.lora_B_up"] == (F, 2)
    assert shapes["blocks.0.attn.qkv.lora_B_k"] == (2 * 8, 2)  # kv heads x head dim rows
    assert not any("lora_A_q" in n for n in shapes)


@STYLES
def test_an_optimizer_step_changes_only_the_adapters(style):
    model = _model(style).train()
    apply_lora(model, LoRAConfig(rank=4, targets="all"), torch.Generator().manual_seed(0))
    base = {n: t.clone() for n, t in model.state_dict().items() if not is_adapter(n)}
    adapters = {n: t.clone() for n, t in adapter_state(model).items()}
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(trained) == len(adapters)
    opt = torch.optim.AdamW(trained, lr=1e-2)
    x = _x()
    for _ in range(2):  # B is zero at first: the second step moves A too
        loss, _ = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, t in model.state_dict().items():
        if not is_adapter(n):
            assert torch.equal(t, base[n]), n  # bit-identical
    moved = [n for n, t in adapter_state(model).items() if not torch.equal(t, adapters[n])]
    assert sorted(moved) == sorted(adapters)


@STYLES
def test_merged_equals_unmerged_and_is_a_plain_gpt(style):
    model = _model(style)
    plain_keys = set(model.state_dict())
    apply_lora(model, LoRAConfig(rank=3, alpha=6.0, targets="q,v,o,mlp_out"))
    _perturb_b(model)
    x = _x()
    unmerged = model(x)
    assert not torch.allclose(unmerged, _model(style)(x))  # the adapters do something
    merge_lora(model)
    assert set(model.state_dict()) == plain_keys
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)
    fresh = GPT(model.cfg).eval()
    fresh.load_state_dict(model.state_dict())  # strict: loads as a plain model
    torch.testing.assert_close(fresh(x), unmerged, atol=1e-5, rtol=1e-5)


def test_adapter_state_round_trips_strictly():
    model = _model(LLAMA_STYLE)
    apply_lora(model, LoRAConfig(rank=2, targets="attn"))
    _perturb_b(model)
    state = adapter_state(model)
    other = _model(LLAMA_STYLE)
    apply_lora(other, LoRAConfig(rank=2, targets="attn"), torch.Generator().manual_seed(9))
    load_adapter_state(other, state)
    torch.testing.assert_close(other(_x()), model(_x()), atol=0, rtol=0)
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(other, {k: v for k, v in state.items() if "lora_A_q" not in k})
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter_state(other, {**state, "blocks.0.mlp.fc.lora_A_gate": torch.zeros(2, 32)})
    wrong = {k: (v[:1] if k.endswith("attn.proj.lora_A") else v) for k, v in state.items()}
    with pytest.raises(ValueError, match="shape"):
        load_adapter_state(other, wrong)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        load_adapter_state(_model(LLAMA_STYLE), state)


def test_seeded_adapters_are_reproducible():
    a, b = _model(GPT2_STYLE), _model(GPT2_STYLE)
    apply_lora(a, LoRAConfig(rank=2), torch.Generator().manual_seed(5))
    apply_lora(b, LoRAConfig(rank=2), torch.Generator().manual_seed(5))
    for (n, x), (_, y) in zip(adapter_state(a).items(), adapter_state(b).items(), strict=True):
        assert torch.equal(x, y), n


def test_targets_matching_no_layer_list_the_available_ones():
    moe = ModelConfig(**GPT2_STYLE, moe=MoEConfig(n_experts=4, top_k=2))
    model = GPT(moe)
    with pytest.raises(ValueError) as e:
        apply_lora(model, LoRAConfig(rank=2, targets="mlp"))
    message = str(e.value)
    assert "\n" not in message
    assert "mixture-of-experts" in message and "available targets: q, k, v, o" in message
    assert all(p.requires_grad for p in model.parameters())  # refused before freezing
    with pytest.raises(ValueError, match="rank is 0"):
        apply_lora(_model(GPT2_STYLE), LoRAConfig(rank=0))
    model = _model(GPT2_STYLE)
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig(rank=2))
