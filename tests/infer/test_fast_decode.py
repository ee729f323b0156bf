"""The lean decode step (infer/fast_decode.py) computes what the model's cached forward does:
the same logits step by step, for every architecture it claims, and the same greedy tokens
through the engine; architectures it does not cover keep the general path."""

from __future__ import annotations

import pytest
import torch
from tests.infer.test_engine import build

from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.infer.fast_decode import FastDecode, supported
from gptlab.model.config import ModelConfig
from gptlab.model.kv_cache import KVCache

ARCHS = {
    "gpt2": {},
    "llama": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2),
    "relu2_tanh_mqa": dict(mlp="relu2", n_kv_head=1, embed_scale=True, logit_softcap=15.0),
    "gelu_tanh_nopos_bias": dict(mlp="gelu_tanh", pos_emb="none", bias=True),
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cache(model, batch: int) -> KVCache:
    cfg = model.cfg
    return KVCache(cfg.n_layer, batch, cfg.kv_heads, cfg.seq_len, cfg.head_dim,
                   device="cpu", dtype=torch.float32)  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
@torch.inference_mode()
def test_fast_step_logits_equal_forward_cached(arch):
    model = build(**ARCHS[arch])
    assert supported(model.cfg)
    B, n_steps = 2, 12
    ref, fast = _cache(model, B), _cache(model, B)
    lean = FastDecode(model, fast)
    prompt = torch.randint(model.cfg.vocab_size, (B, 3), generator=torch.Generator().manual_seed(1))
    for cache in (ref, fast):  # the same prefill into both caches
        step = cache.begin(slice(0, B), 3)
        model.forward_cached(prompt, step)
        step.commit()
    tokens = torch.randint(model.cfg.vocab_size, (n_steps, B))
    for t in range(n_steps):
        step = ref.begin(slice(0, B), 1)
        want = model.forward_cached(tokens[t][:, None], step)  # (B, V)
        step.commit()
        got = lean.step(tokens[t], 3 + t)  # (B, V)
        fast.lengths = [4 + t] * B
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for layer in range(model.cfg.n_layer):  # the caches hold the same keys and values
        torch.testing.assert_close(fast.k[layer], ref.k[layer], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(fast.v[layer], ref.v[layer], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_engine_greedy_tokens_same_with_and_without_the_lean_step(arch):
    model = build(**ARCHS[arch])
    prompts = [[1, 2, 3], [4, 5], [6]]  # different lengths: the lean step and the general mix
    lean = Engine(model, max_batch=3)
    general = Engine(model, max_batch=3)
    general.decode_forward = model.forward_cached  # the general path only
    assert lean.fast is not None
    params = SamplingParams(temperature=0, max_new_tokens=40)  # past capacity 32: shifts too
    for prompt in prompts:
        a = lean.generate([prompt], params)[0].sequences[0].generated
        b = general.generate([prompt], params)[0].sequences[0].generated
        assert a == b and len(a) == 40
    a = [r.sequences[0].generated for r in lean.generate(prompts, params)]
    b = [r.sequences[0].generated for r in general.generate(prompts, params)]
    assert a == b


@pytest.mark.parametrize(
    "kwargs", [dict(window=8), dict(pos_emb="alibi"), dict(qk_norm=True), dict(attn_softcap=30.0)]
)
def test_other_architectures_keep_the_general_forward(kwargs):
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=32, seq_len=32, vocab_size=50, **kwargs)
    assert not supported(cfg)
    model = build(**kwargs)
    assert Engine(model, max_batch=1).fast is None
    with pytest.raises(ValueError, match="does not cover"):
        FastDecode(model, _cache(model, 1))


def test_a_compiled_engine_does_not_take_the_lean_step():
    assert Engine(build(), max_batch=1, compile=True).fast is None
