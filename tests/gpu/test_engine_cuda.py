"""The inference engine on CUDA: cached decoding computes what the full forward computes, and
greedy generation in fp32 picks the tokens the CPU picks; the compiled decode step (CUDA's
inductor, no cpp_wrapper) and a bf16 engine behave too.

The model is tests/infer/test_engine.py's tiny GPT with fan-in scaled random weights: its
logits are O(1) and far apart, so fp32 rounding differences between devices (about 1e-6) do not
flip a greedy argmax, and a token that differs is a bug, not noise.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.infer.test_engine import build, prompt_of

from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine, cast_for_inference
from gptlab.model.gpt import GPT
from gptlab.model.kv_cache import KVCache

pytestmark = pytest.mark.gpu

NEW = 20
# the frequency penalty keeps greedy decoding off a single repeated token: varied outputs
GREEDY = SamplingParams(temperature=0, max_new_tokens=NEW, frequency_penalty=1.0)
SAMPLED = SamplingParams(temperature=1.0, max_new_tokens=NEW, seed=0)
PROMPTS = [prompt_of(3, 1), prompt_of(9, 2), prompt_of(1, 3)]


@pytest.fixture(scope="module")
def cpu_model() -> GPT:
    return build()


def on(model: GPT, device: torch.device) -> GPT:
    return copy.deepcopy(model).to(device).eval()


def generated(engine: Engine, params: SamplingParams = GREEDY) -> list[list[int]]:
    return [req.sequences[0].generated for req in engine.generate(PROMPTS, params)]


@torch.no_grad()
def test_cached_decoding_equals_the_full_forward(cpu_model, cuda, strict_fp32):
    """Prefill a prompt, then feed one token at a time through the KV cache: every step's
    logits equal the full forward's logits at that position."""
    model = on(cpu_model, cuda)
    cfg = model.cfg
    tokens = torch.tensor([prompt_of(cfg.seq_len, 4)], device=cuda)  # (1, T)
    full = model(tokens)  # (1, T, V)
    cache = KVCache(
        cfg.n_layer, 1, cfg.kv_heads, cfg.seq_len, cfg.head_dim, device=cuda, dtype=torch.float32
    )
    P = 5
    step = cache.begin(slice(0, 1), P)
    cached = [model.forward_cached(tokens[:, :P], step)]  # (1, V) after the prompt
    step.commit()
    for t in range(P, cfg.seq_len):
        step = cache.begin(slice(0, 1), 1)
        cached.append(model.forward_cached(tokens[:, t : t + 1], step))  # (1, V)
        step.commit()
    torch.testing.assert_close(torch.stack(cached, dim=1), full[:, P - 1 :], rtol=1e-4, atol=1e-4)


def test_greedy_on_cuda_equals_cpu_in_fp32(cpu_model, cuda, strict_fp32):
    on_cpu = generated(Engine(cpu_model, max_batch=4))
    engine = Engine(on(cpu_model, cuda), max_batch=4)
    assert engine.cache.k[0].device.type == cuda.type
    assert generated(engine) == on_cpu
    assert all(len(g) == NEW for g in on_cpu) and len({t for g in on_cpu for t in g}) > 10


def test_seeded_sampling_on_cuda_equals_cpu_in_fp32(cpu_model, cuda, strict_fp32):
    """Each row draws from its own CPU generator (infer/sampling.py), so a seed gives the same
    tokens on any device."""
    on_cpu = generated(Engine(cpu_model, max_batch=4), SAMPLED)
    assert generated(Engine(on(cpu_model, cuda), max_batch=4), SAMPLED) == on_cpu


def test_compiled_decode_on_cuda_equals_eager(cpu_model, cuda, strict_fp32):
    model = on(cpu_model, cuda)
    eager = generated(Engine(model, max_batch=4))
    assert generated(Engine(model, max_batch=4, compile=True)) == eager


def test_bf16_engine_on_cuda_mostly_agrees_with_fp32(cpu_model, cuda):
    """bf16 weights and cache (what `sample` and `serve` run on a GPU): the greedy tokens stay
    close to fp32's, and the cache takes the weights' dtype."""
    fp32 = generated(Engine(on(cpu_model, cuda), max_batch=4))
    engine = Engine(cast_for_inference(on(cpu_model, cuda), torch.bfloat16), max_batch=4)
    assert engine.cache.k[0].dtype == torch.bfloat16
    bf16 = generated(engine)
    pairs = [(a, b) for ga, gb in zip(fp32, bf16, strict=True) for a, b in zip(ga, gb, strict=True)]
    agree = sum(a == b for a, b in pairs)
    first = [g[0] for g in bf16] == [g[0] for g in fp32]  # before any divergence compounds
    assert first and agree >= 0.5 * len(PROMPTS) * NEW, agree
