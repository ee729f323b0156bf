"""PEFT export (interop/peft.py): PeftModel.from_pretrained on the HF export of the base, with
our exported adapters, computes our LoRA model's logits (GPT-2's fused Conv1D c_attn and a
Llama-style model with RoPE, RMSNorm, SwiGLU and GQA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab.errors import ConfigError
from gptlab.interop import hf
from gptlab.interop.peft import export_peft, peft_adapter
from gptlab.model.config import LoRAConfig, ModelConfig
from gptlab.model.gpt import GPT
from gptlab.model.lora import adapter_state, apply_lora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

GPT2_STYLE = dict(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=60, mlp="gelu_tanh")
LLAMA_STYLE = dict(
    n_layer=2, n_head=4, n_kv_head=2, n_embd=32, seq_len=16, vocab_size=60, pos_emb="rope",
    norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
)  # fmt: skip


def _lora_model(style: dict, lora: LoRAConfig) -> tuple[GPT, dict[str, torch.Tensor]]:
    """(our model with random adapters, the base's plain state dict)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**style)).eval()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    apply_lora(model, lora, generator=g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model, base


def _peft_logits(
    tmp_path: Path, model: GPT, base: dict[str, torch.Tensor], lora: LoRAConfig, x
) -> torch.Tensor:
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    base_dir.mkdir()
    adapter_dir.mkdir()
    hf.export_hf(model.cfg, set(base), lambda n: base[n], None, base_dir)
    export_peft(model.cfg, lora, adapter_state(model), adapter_dir)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    wrapped = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
    with torch.no_grad():
        return wrapped(x).logits


@pytest.mark.parametrize(
    ("style", "targets"),
    [(GPT2_STYLE, "all"), (GPT2_STYLE, "q,v"), (LLAMA_STYLE, "all"), (LLAMA_STYLE, "k,o")],
    ids=["gpt2-all", "gpt2-qv", "llama-all", "llama-ko"],
)
def test_peft_round_trip_gives_our_logits(tmp_path, style, targets):
    lora = LoRAConfig(rank=3, alpha=12.0, targets=targets)
    model, base = _lora_model(style, lora)
    x = torch.randint(0, 60, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x)
        plain = GPT(model.cfg).eval()
        plain.load_state_dict(base, strict=False)
        assert not torch.allclose(ours, plain(x), atol=1e-3)  # the adapters matter
    theirs = _peft_logits(tmp_path, model, base, lora, x)
    torch.testing.assert_close(theirs, ours[..., :60], atol=1e-5, rtol=1e-5)


def test_gpt2_qkv_becomes_one_block_structured_adapter():
    lora = LoRAConfig(rank=2, alpha=4.0, targets="q,k,v,o")
    model, _ = _lora_model(GPT2_STYLE, lora)
    tensors, config = peft_adapter(model.cfg, lora, adapter_state(model))
    a = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"]
    b = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert a.shape == (6, 32) and b.shape == (96, 6)
    assert config["rank_pattern"] == {"attn.c_attn": 6}
    assert config["alpha_pattern"] == {"attn.c_attn": 12.0}  # scale stays 4 / 2
    assert config["fan_in_fan_out"] is True
    assert sorted(config["target_modules"]) == ["attn.c_attn", "attn.c_proj"]
    assert torch.count_nonzero(b[:32, 2:]) == 0  # q's rows use q's columns only


def test_llama_names_and_no_patterns(tmp_path):
    lora = LoRAConfig(rank=2, targets="all")
    model, _ = _lora_model(LLAMA_STYLE, lora)
    files = export_peft(model.cfg, lora, adapter_state(model), tmp_path, base_name="base")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert config["rank_pattern"] == {} and config["fan_in_fan_out"] is False
    assert config["base_model_name_or_path"] == "base"


def test_a_base_without_hf_export_is_refused():
    cfg = ModelConfig(**{**GPT2_STYLE, "pos_emb": "alibi"})
    model = GPT(cfg)
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="no Hugging Face export"):
        peft_adapter(cfg, LoRAConfig(rank=2), adapter_state(model))
