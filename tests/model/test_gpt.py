import dataclasses
import math

import pytest
import torch

from gptlab.model.accounting import count_params, flops_per_token
from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT


def test_forward_shapes_and_dtype(model_cfg):
    model = GPT(model_cfg)
    idx = torch.randint(model_cfg.vocab_size, (3, 10))
    logits = model(idx)
    assert logits.shape == (3, 10, model_cfg.vocab_size) and logits.dtype == torch.float32
    loss, stats = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss) and torch.equal(loss, stats["ce"])


def test_causality(model_cfg):
    """Changing token t never changes the logits at positions before t."""
    model = GPT(model_cfg).eval()
    idx = torch.randint(model_cfg.vocab_size, (1, model_cfg.seq_len))
    base = model(idx)
    for t in (0, 5, model_cfg.seq_len - 1):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % model_cfg.vocab_size
        out = model(changed)
        assert torch.equal(out[0, :t], base[0, :t])
        assert not torch.allclose(out[0, t], base[0, t])


def test_initial_loss_is_about_ln_vocab(model_cfg):
    model = GPT(model_cfg)
    idx = torch.randint(model_cfg.vocab_size, (8, model_cfg.seq_len))
    loss, _ = model(idx, torch.randint(model_cfg.vocab_size, (8, model_cfg.seq_len)))
    assert abs(loss.item() - math.log(model_cfg.vocab_size)) < 0.1


def test_one_batch_overfits(model_cfg):
    torch.manual_seed(0)
    model = GPT(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(model_cfg.vocab_size, (4, model_cfg.seq_len))
    y = torch.randint(model_cfg.vocab_size, (4, model_cfg.seq_len))
    for _ in range(150):
        loss, _ = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_tied_embeddings_and_param_count(model_cfg):
    model = GPT(model_cfg)
    assert model.lm_head.weight is model.wte.weight
    C, V, T, L = model_cfg.n_embd, model_cfg.padded_vocab, model_cfg.seq_len, model_cfg.n_layer
    per_block = (3 * C * C + 3 * C) + (C * C + C) + (8 * C * C + 5 * C) + 4 * C
    counts = count_params(model)
    assert counts.total == counts.active == V * C + T * C + L * per_block + 2 * C
    assert counts.embedding == T * C  # the tied token table is also the output matmul


def test_gpt2_init_scales_residual_projections():
    cfg = ModelConfig(n_layer=8, n_head=4, n_embd=256, seq_len=16, vocab_size=64)
    model = GPT(cfg)
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 2e-3
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 1e-3
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)


META_INIT_VARIANTS = {
    "gpt2": {},
    "rope_moe_bias_balancing": {
        "pos_emb": "rope",
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "tie_embeddings": False,
        "moe": MoEConfig(n_experts=3, top_k=2, n_shared_experts=1, bias_balancing=True),
    },
    "alibi_qk_norm_mtp": {"pos_emb": "alibi", "qk_norm": True, "mtp_heads": 1},
}


@pytest.mark.parametrize("variant", META_INIT_VARIANTS)
def test_meta_build_then_init_weights_equals_gpt(model_cfg, variant):
    """Built on the meta device, materialised with to_empty (garbage memory) and initialised by
    init_weights, a model holds exactly what GPT(cfg) holds for the same seed: every parameter
    and every buffer (rotary tables, ALiBi slopes, MoE balancing biases), with the head tied."""
    cfg = dataclasses.replace(model_cfg, **META_INIT_VARIANTS[variant])
    torch.manual_seed(3)
    ref = GPT(cfg)
    with torch.device("meta"):
        model = GPT(cfg)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    for t in [*model.parameters(), *model.buffers()]:
        t.data.fill_(float("nan"))  # what to_empty leaves is arbitrary
    torch.manual_seed(3)
    model.init_weights()
    assert (model.lm_head.weight is model.wte.weight) == cfg.tie_embeddings
    for (name, a), (ref_name, b) in zip(
        [*model.named_parameters(), *model.named_buffers()],
        [*ref.named_parameters(), *ref.named_buffers()],
        strict=True,
    ):
        assert name == ref_name and torch.equal(a, b), name


def test_no_bias_option(model_cfg):
    model = GPT(dataclasses.replace(model_cfg, bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_flops_per_token_matches_6n_plus_attention():
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, seq_len=1024, vocab_size=50257)
    n_matmul = 12 * 12 * 768 * 768 + 50304 * 768  # lm_head over the padded vocabulary
    assert flops_per_token(cfg) == 6 * n_matmul + 12 * 12 * 1024 * 768


def test_too_long_input_is_rejected(model_cfg):
    with pytest.raises(ValueError, match="exceeds model.seq_len"):
        GPT(model_cfg)(torch.zeros(1, model_cfg.seq_len + 1, dtype=torch.long))


def test_bf16_autocast_cpu_matches_fp32(model_cfg):
    model = GPT(model_cfg).eval()
    idx = torch.randint(model_cfg.vocab_size, (2, model_cfg.seq_len))
    ref = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=5e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_embd": 100, "n_head": 3}, "not divisible"),
        ({"n_layer": 0}, "n_layer must be >= 1"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)
