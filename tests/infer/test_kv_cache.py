"""The KV cache gives the full forward's numbers, for every architecture variant.

A cached forward (prefill, then one token at a time; right-padded batches; rows at different
lengths; chunked prefill) must give the logits that model(idx) gives at the same positions,
and greedy generation through the Engine must give the tokens of a naive uncached loop. Models
are re-randomised with O(1) attention scores so masks and position schemes change the numbers
(at GPT-2 init attention is almost uniform and a wrong mask could hide in the tolerance).
"""

from __future__ import annotations

import pytest
import torch

from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.model.kv_cache import KVCache

T, V = 32, 50
BASE = dict(n_layer=2, n_head=4, n_embd=32, seq_len=T, vocab_size=V, vocab_multiple=1)
ATOL = 1e-4

VARIANTS = {
    "gpt2": {},
    "llama": {
        "pos_emb": "rope",
        "n_kv_head": 2,
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "qk_norm": True,
    },
    "relu2": {"mlp": "relu2"},
    "window": {"window": 4},
    "window_sl_global_rope": {
        "window": 4,
        "window_pattern": "SL",
        "global_tokens": 2,
        "pos_emb": "rope",
    },
    "alibi": {"pos_emb": "alibi"},
    "alibi_window": {"pos_emb": "alibi", "window": 6, "global_tokens": 1},
    "softcaps": {"attn_softcap": 1.0, "logit_softcap": 2.0},
    "moe": {"moe": MoEConfig(n_experts=4, top_k=2, capacity_factor=1.0)},
    "rope_yarn": {"pos_emb": "rope", "rope_scaling": "yarn", "rope_factor": 4.0},
    "nopos": {"pos_emb": "none"},
    "mqa": {"n_kv_head": 1},
    "math": {"attn_backend": "math"},
    "flex": {"attn_backend": "flex"},
    "embed_scale": {"embed_scale": True},
    "no_bias": {"bias": False},
}


@torch.no_grad()
def build(kwargs: dict | None = None, seed: int = 0) -> GPT:
    """A tiny eval-mode GPT with fan-in scaled random weights (O(1) scores and logits)."""
    cfg = ModelConfig(**(BASE | (kwargs or {})))
    torch.manual_seed(seed)
    model = GPT(cfg)
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() >= 2:  # Linear/Embedding (out, in); MoE stacks (E, in, out)
            fan_in = p.shape[1] if p.dim() == 3 else p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
        else:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: one thread is much faster than two on a shared CPU (conftest restores it)."""
    torch.set_num_threads(1)


def new_cache(model: GPT, batch: int, capacity: int | None = None) -> KVCache:
    cfg = model.cfg
    return KVCache(
        cfg.n_layer,
        batch,
        cfg.kv_heads,
        capacity or cfg.seq_len,
        cfg.head_dim,
        device="cpu",
        dtype=torch.float32,
    )


def cached(model: GPT, cache: KVCache, rows: slice, idx: torch.Tensor, n_new=None):
    """One cached forward of idx (B, T) into `rows`, committed; logits (B, V)."""
    step = cache.begin(rows, idx.size(1), n_new)
    logits = model.forward_cached(idx, step)
    step.commit()
    return logits


def tokens(B: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (B, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def naive_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    idx = torch.tensor([prompt])
    out = []
    for _ in range(n):
        nxt = model(idx)[:, -1].argmax(dim=-1)  # (1,)
        out.append(int(nxt))
        idx = torch.cat([idx, nxt[:, None]], dim=1)
    return out


# --- every variant


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_prefill_then_decode_matches_full_forward(name):
    model = build(VARIANTS[name])
    idx = tokens(2, T)
    full = model(idx)  # (2, T, V)
    cache = new_cache(model, 2)
    logits = cached(model, cache, slice(0, 2), idx[:, :12])
    assert logits.shape == (2, V)
    torch.testing.assert_close(logits, full[:, 11], atol=ATOL, rtol=0)
    for t in range(12, T):
        logits = cached(model, cache, slice(0, 2), idx[:, t : t + 1])
        torch.testing.assert_close(logits, full[:, t], atol=ATOL, rtol=0, msg=f"position {t}")
    assert cache.lengths == [T, T]


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_chunked_prefill_matches_full_forward(name):
    """Prefill in chunks: a uniform multi-token step that does not start at slot 0."""
    model = build(VARIANTS[name])
    idx = tokens(2, 20, seed=3)
    full = model(idx)
    cache = new_cache(model, 2)
    for lo, hi in [(0, 5), (5, 13), (13, 20)]:
        logits = cached(model, cache, slice(0, 2), idx[:, lo:hi])
        torch.testing.assert_close(logits, full[:, hi - 1], atol=ATOL, rtol=0, msg=f"chunk {hi}")


@pytest.mark.parametrize("name", VARIANTS)
def test_engine_greedy_matches_naive_loop(name):
    model = build(VARIANTS[name])
    prompt = tokens(1, 8, seed=2)[0].tolist()
    n = T - len(prompt)  # prompt + n == seq_len: no shift
    engine = Engine(model, max_batch=2)
    (req,) = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=n))
    seq = req.sequences[0]
    assert seq.finish_reason == "length"
    assert seq.generated == naive_greedy(model, prompt, n)


@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_padded_prefill_then_ragged_decode(name):
    """Right-padded prefill (7 and 10 real tokens), then steps with rows at different lengths.

    The cache has 3 rows and the batch uses rows 1..2, so row offsets are exercised too.
    """
    model = build(VARIANTS[name])
    seqs = tokens(2, 16, seed=4)
    idx = seqs[:, :10].clone()
    idx[0, 7:] = (idx[0, 7:] + 17) % V  # padding: junk that must never be seen
    cache = new_cache(model, 3)
    logits = cached(model, cache, slice(1, 3), idx, [7, 10])
    assert cache.lengths == [0, 7, 10]
    want = torch.stack([model(seqs[:1, :7])[0, -1], model(seqs[1:, :10])[0, -1]])
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)

    # one decode step: row 1 at position 7, row 2 at position 10
    step_idx = torch.stack([seqs[0, 7:8], seqs[1, 10:11]])  # (2, 1)
    logits = cached(model, cache, slice(1, 3), step_idx)
    assert cache.lengths == [0, 8, 11]
    want = torch.stack([model(seqs[:1, :8])[0, -1], model(seqs[1:, :11])[0, -1]])
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)

    # a ragged multi-token step: 3 real tokens for row 1, 1 (+2 padding) for row 2
    chunk = torch.stack([seqs[0, 8:11], seqs[1, 11:14]])  # (2, 3)
    chunk[1, 1:] = (chunk[1, 1:] + 5) % V
    logits = cached(model, cache, slice(1, 3), chunk, [3, 1])
    assert cache.lengths == [0, 11, 12]
    want = torch.stack([model(seqs[:1, :11])[0, -1], model(seqs[1:, :12])[0, -1]])
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)

    # and a final decode step over both rows again
    logits = cached(model, cache, slice(1, 3), torch.stack([seqs[0, 11:12], seqs[1, 12:13]]))
    want = torch.stack([model(seqs[:1, :12])[0, -1], model(seqs[1:, :13])[0, -1]])
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)


# --- the cache's own bookkeeping


def test_begin_refuses_more_than_capacity():
    model = build()
    cache = new_cache(model, 2, capacity=8)
    with pytest.raises(ValueError, match="capacity"):
        cache.begin(slice(0, 2), 9)
    cache.begin(slice(0, 2), 8)  # exactly full is fine
    cached(model, cache, slice(0, 1), tokens(1, 6))
    assert cache.lengths == [6, 0]
    with pytest.raises(ValueError, match="capacity"):
        cache.begin(slice(0, 2), 3)  # row 0: 6 + 3 > 8
    cache.begin(slice(1, 2), 3)  # row 1 alone has room
    cache.begin(slice(0, 2), 2)


@pytest.mark.parametrize("n_new", [[3], [5, 1], [-1, 2], [2, 3, 1]])
def test_begin_checks_n_new(n_new):
    cache = new_cache(build(), 2)
    with pytest.raises(ValueError, match="n_new"):
        cache.begin(slice(0, 2), 4, n_new)


@torch.no_grad()
def test_commit_updates_lengths():
    model = build()
    cache = new_cache(model, 4)
    step = cache.begin(slice(1, 4), 5, [5, 2, 0])
    model.forward_cached(tokens(3, 5), step)
    assert cache.lengths == [0, 0, 0, 0]  # nothing counts before the commit
    step.commit()
    assert cache.lengths == [0, 5, 2, 0]
    cached(model, cache, slice(1, 4), tokens(3, 1))
    assert cache.lengths == [0, 6, 3, 1]
    cache.reset(1)
    assert cache.lengths == [0, 0, 3, 1]


@torch.no_grad()
def test_copy_row_copies_keys_values_and_length():
    model = build()
    cache = new_cache(model, 3)
    prompt = tokens(1, 9)
    first = cached(model, cache, slice(0, 1), prompt)
    cache.copy_row(0, 2)
    assert cache.lengths == [9, 0, 9]
    for k, v in zip(cache.k, cache.v, strict=True):
        assert torch.equal(k[2, :, :9], k[0, :, :9])
        assert torch.equal(v[2, :, :9], v[0, :, :9])
        assert k[0, :, :9].abs().sum() > 0
    # both copies continue identically, and like the full forward
    nxt = first.argmax(dim=-1)  # (1,)
    logits = cached(model, cache, slice(0, 3), nxt.expand(3)[:, None])
    torch.testing.assert_close(logits[2], logits[0], atol=0, rtol=0)
    full = model(torch.cat([prompt, nxt[:, None]], dim=1))[0, -1]
    torch.testing.assert_close(logits[2], full, atol=ATOL, rtol=0)


def test_engine_rejects_bad_capacity_and_batch():
    model = build()
    with pytest.raises(ValueError, match="capacity"):
        Engine(model, capacity=T + 1)
    with pytest.raises(ValueError, match="capacity"):
        Engine(model, capacity=0)
    with pytest.raises(ValueError, match="max_batch"):
        Engine(model, max_batch=0)
