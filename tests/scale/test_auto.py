"""Auto-configuration reproduces nanochat's published shapes and batch/horizon rules."""

import dataclasses

import pytest

from gptlab.errors import ConfigError
from gptlab.model.config import ModelConfig
from gptlab.optim.config import OptimConfig
from gptlab.presets import get_preset
from gptlab.scale.auto import derive
from gptlab.scale.config import AutoConfig
from gptlab.scale.params import scaling_params
from gptlab.train.config import RunConfig, TrainConfig

# nanochat's architecture in gptlab terms: RoPE, parameter-free RMSNorm, ReLU^2, untied head,
# no biases, vocab 32768, context 2048 (its value embeddings are lookup tables, outside N)
NANOCHAT = RunConfig(
    model=ModelConfig(
        n_layer=12,
        n_head=6,
        n_embd=768,
        seq_len=2048,
        vocab_size=32768,
        pos_emb="rope",
        norm="rmsnorm",
        norm_weight=False,
        mlp="relu2",
        tie_embeddings=False,
        bias=False,
    ),
    optim=OptimConfig(lr=0.008, min_lr=0.0004, weight_decay=0.28, warmup_steps=40),
    train=TrainConfig(batch_size=32),
)


def nanochat(depth: int, ratio: float = 10.5) -> AutoConfig:
    """nanochat's defaults: aspect ratio 64, head dim 128, d12 reference with 2^19 tokens."""
    return AutoConfig(depth=depth, param_data_ratio=ratio, ref_batch_tokens=2**19)


@pytest.mark.parametrize(("depth", "n_embd", "n_head"), [(12, 768, 6), (20, 1280, 10)])
def test_nanochat_shapes(depth, n_embd, n_head):
    m = derive(NANOCHAT, nanochat(depth)).config.model
    assert (m.n_layer, m.n_embd, m.n_head, m.head_dim) == (depth, n_embd, n_head, 128)


# dev/LOG.md 2026-02-05 "Auto Batch Size Scaling": depth, scaling params (transformer matrices +
# lm_head), target tokens at ratio 10.5, auto batch in tokens
@pytest.mark.parametrize(
    ("depth", "params_m", "tokens_b", "batch"),
    [
        (8, 42, 0.44, 2**18),
        (10, 70, 0.74, 2**19),
        (12, 110, 1.16, 2**19),
        (16, 235, 2.5, 2**19),
        (18, 324, 3.4, 2**20),
        (20, 435, 4.57, 2**20),
        (26, 918, 9.6, 2**20),
        (32, 1700, 17.6, 2**21),
    ],
)
def test_nanochat_published_batch_table(depth, params_m, tokens_b, batch):
    d = derive(NANOCHAT, nanochat(depth))
    assert d.params / 1e6 == pytest.approx(params_m, rel=0.015)
    assert d.tokens / 1e9 == pytest.approx(tokens_b, rel=0.02)
    assert d.config.train.batch_size * d.config.train.grad_accum_steps * 2048 == batch


def test_reference_depth_keeps_the_base_hyperparameters():
    cfg = derive(NANOCHAT, nanochat(12)).config
    assert cfg.optim.lr == pytest.approx(0.008)
    assert cfg.optim.weight_decay == pytest.approx(0.28)
    assert cfg.train.max_steps == round(10.5 * 110_100_480 / 2**19)


def test_d20_lr_and_weight_decay_follow_nanochat_rules():
    d = derive(NANOCHAT, nanochat(20))
    b_ratio = 2**20 / 2**19
    assert d.config.optim.lr == pytest.approx(0.008 * b_ratio**0.5 * (1280 / 768) ** -0.5)
    assert d.config.optim.muon_lr == pytest.approx(0.005 * b_ratio**0.5)
    d_ref = 10.5 * scaling_params(derive(NANOCHAT, nanochat(12)).config.model)
    wd = 0.28 * b_ratio**0.5 * d_ref / (10.5 * d.params)
    assert d.config.optim.weight_decay == pytest.approx(wd)
    assert 0.09 < wd < 0.11  # nanochat LOG: d20's optimum is ~0.08-0.1 against 0.22-0.28 at d12


def test_flops_budget_sets_the_horizon():
    d = derive(NANOCHAT, dataclasses.replace(nanochat(12), flops=1e18))
    assert d.flops == pytest.approx(1e18, rel=0.01)
    assert d.config.train.max_steps == round(1e18 / (887_095_296 * 2**19))


def test_width_rounds_up_to_the_head_dim():
    auto = AutoConfig(depth=3, aspect_ratio=20, head_dim=16, ref_depth=2)
    m = derive(get_preset("shakespeare_char_cpu"), auto).config.model
    assert (m.n_embd, m.n_head) == (64, 4)  # 60 -> 64


def test_param_conventions_order():
    m = get_preset("shakespeare_char_cpu").model
    total, non_emb, blocks = (scaling_params(m, c) for c in ("total", "non_embedding", "blocks"))
    assert total - non_emb == 64 * 256  # the learned position table (the head is tied)
    assert non_emb - blocks == 128 * 256 + 256  # tied head + final norm


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": -1}, "auto.depth"),
        ({"head_dim": 0}, "auto.head_dim"),
        ({"param_data_ratio": 0}, "param_data_ratio"),
        ({"params": "all"}, "auto.params"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoConfig(**kwargs)


def test_depth_zero_is_refused():
    with pytest.raises(ConfigError, match="auto.depth"):
        derive(NANOCHAT, AutoConfig())


def test_batch_round_to_a_multiple_of_rows():
    base = get_preset("shakespeare_char_cpu")  # 32 rows of 64 at the reference depth
    auto = AutoConfig(depth=6, aspect_ratio=16, head_dim=16, ref_depth=4, batch_round=16)
    pow2 = derive(base, dataclasses.replace(auto, batch_round=0)).config.train
    rows = derive(base, auto).config.train
    assert pow2.batch_size * pow2.grad_accum_steps == 64  # 50.6 rows -> 2^6
    assert rows.batch_size * rows.grad_accum_steps == 48  # -> 3 x 16


def test_micro_batch_is_the_largest_divisor_up_to_the_base():
    """A base micro-batch of 12 rows and GPT-2's 512-row batch: 8 rows x 64 micro-batches."""
    t = derive(get_preset("gpt2"), AutoConfig(depth=12)).config.train
    assert (t.batch_size, t.grad_accum_steps) == (8, 64)
