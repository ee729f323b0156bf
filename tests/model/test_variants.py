"""Each architecture variant is what its ModelConfig field claims.

Backends agree (sdpa and flex against the explicit math reference), every variant is causal,
RoPE is relative, windows and document masks cut exactly the dependencies they should, GQA
with one query head per kv head is MHA, MTP off is the base model, vocab padding is invisible,
and a few representative variants train. Models are re-randomised with O(1) attention scores
so masks, softcaps and position schemes change the numbers (at GPT-2 init attention is almost
uniform and many mistakes would hide inside the tolerance).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.config import from_dict
from gptlab.model.attention import AttnContext
from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.model.layers import Rotary, alibi_slopes, apply_rope, rope_frequencies

B, T, V = 2, 16, 50
BASE = dict(n_layer=2, n_head=4, n_embd=32, seq_len=T, vocab_size=V, vocab_multiple=1)

VARIANTS = {
    "gpt2": {},
    "rope": {"pos_emb": "rope"},
    "rope_linear": {"pos_emb": "rope", "rope_scaling": "linear", "rope_factor": 2.0},
    "rope_yarn": {"pos_emb": "rope", "rope_scaling": "yarn", "rope_factor": 4.0},
    "nopos": {"pos_emb": "none"},
    "alibi": {"pos_emb": "alibi"},
    "rmsnorm": {"norm": "rmsnorm"},
    "no_norm_weight": {"norm_weight": False},
    "qk_norm": {"qk_norm": True},
    "swiglu": {"mlp": "swiglu"},
    "relu2": {"mlp": "relu2"},
    "gqa": {"n_kv_head": 2},
    "mqa": {"n_kv_head": 1},
    "attn_softcap": {"attn_softcap": 1.0},
    "logit_softcap": {"logit_softcap": 2.0},
    "window": {"window": 4},
    "window_pattern_global": {"window": 4, "window_pattern": "SL", "global_tokens": 2},
    "doc_mask": {"doc_mask": True},
    "doc_mask_rope_window": {"doc_mask": True, "pos_emb": "rope", "window": 5},
    "embed_scale": {"embed_scale": True},
    "untied": {"tie_embeddings": False},
    "zero_init_proj": {"zero_init_proj": True},
    "moe": {"moe": MoEConfig(n_experts=4, top_k=2, n_shared_experts=1)},
    "mtp": {"mtp_heads": 2},
    "llama": {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "bias": False},
}
FLEX_VARIANTS = [
    "gpt2",
    "window",
    "window_pattern_global",
    "doc_mask",
    "alibi",
    "attn_softcap",
    "mqa",
    "doc_mask_rope_window",
]


def make_cfg(kwargs: dict, **overrides) -> ModelConfig:
    return ModelConfig(**(BASE | kwargs | overrides))


@torch.no_grad()
def randomize(model: GPT, seed: int = 0) -> GPT:
    """Fan-in scaled random weights (O(1) attention scores and logits); norms, biases jittered."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() >= 2:  # Linear/Embedding (out, in): fan-in last; MoE stacks (E, in, out)
            fan_in = p.shape[1] if p.dim() == 3 else p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
        else:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return randomize(GPT(cfg), seed).eval()


def clone_with(model: GPT, **overrides) -> GPT:
    """The same weights under another config (e.g. another attention backend)."""
    other = GPT(dataclasses.replace(model.cfg, **overrides)).eval()
    other.load_state_dict(model.state_dict())
    return other


def doc_starts_for(cfg: ModelConfig) -> torch.Tensor | None:
    """Packed rows: row 0 holds documents starting at 0, 5, 11; row 1 at 0, 9, 10 (length 1)."""
    if not cfg.doc_mask:
        return None
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[0, [0, 5, 11]] = True
    starts[1, [0, 9, 10]] = True
    return starts


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


def embedding_with_grad(model: GPT) -> list[torch.Tensor]:
    """Hook the token embedding's output so tests can read d(output)/d(input embedding)."""
    seen: list[torch.Tensor] = []

    def hook(_module, _inputs, out):
        out.retain_grad()
        seen.append(out)

    model.wte.register_forward_hook(hook)
    return seen


# --- backends


@pytest.mark.parametrize("name", VARIANTS)
def test_sdpa_matches_math(name):
    """Forward logits, loss (MTP and MoE terms included) and every gradient agree."""
    math_model = build(make_cfg(VARIANTS[name], attn_backend="math"))
    sdpa_model = clone_with(math_model, attn_backend="sdpa")
    idx, starts = tokens(), doc_starts_for(math_model.cfg)
    targets = tokens(seed=2)
    outputs = []
    for model in (math_model, sdpa_model):
        logits = model(idx, doc_starts=starts)
        loss, stats = model(idx, targets, doc_starts=starts)
        loss.backward()
        outputs.append((logits, loss, stats["ce"]))
    for ours, ref in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grads_s = dict(sdpa_model.named_parameters())
    for n, p in math_model.named_parameters():
        torch.testing.assert_close(grads_s[n].grad, p.grad, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", FLEX_VARIANTS)
def test_flex_matches_math(name):
    """FlexAttention's BlockMask/score_mod give the reference numbers (forward only on a CPU)."""
    math_model = build(make_cfg(VARIANTS[name], attn_backend="math"))
    flex_model = clone_with(math_model, attn_backend="flex")
    idx, starts = tokens(), doc_starts_for(math_model.cfg)
    with torch.no_grad():
        ref, out = math_model(idx, doc_starts=starts), flex_model(idx, doc_starts=starts)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# --- causality


@pytest.mark.parametrize("name", VARIANTS)
def test_causality_every_variant(name):
    """Changing token t never changes logits before t (and does change logits at t).

    MoE uses capacity_factor None here: with a capacity, a later token's first choice can take
    an expert slot from an earlier token's second choice (first choices are served first), so
    capped MoE is deliberately not causal within a batch.
    """
    kwargs = VARIANTS[name]
    assert "moe" not in kwargs or kwargs["moe"].capacity_factor is None
    model = build(make_cfg(kwargs))
    idx, starts = tokens(), doc_starts_for(model.cfg)
    with torch.no_grad():
        base = model(idx, doc_starts=starts)
        for t in (3, 8, T - 1):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % V
            out = model(changed, doc_starts=starts)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
            assert (out[:, t] - base[:, t]).abs().max() > 1e-3


# --- GQA


def test_gqa_with_all_kv_heads_is_mha():
    mha = build(make_cfg({}))
    gqa = clone_with(mha, n_kv_head=mha.cfg.n_head)
    idx = tokens()
    with torch.no_grad():
        assert torch.equal(gqa(idx), mha(idx))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_gqa_equals_mha_with_shared_kv_heads(backend, n_kv_head):
    """Query head h uses kv head h // (n_head / n_kv_head): MHA with repeated k/v weights."""
    gqa = build(make_cfg({"n_kv_head": n_kv_head, "attn_backend": backend}))
    mha = GPT(dataclasses.replace(gqa.cfg, n_kv_head=None)).eval()
    H, D = gqa.cfg.n_head, gqa.cfg.head_dim
    groups = H // n_kv_head
    state = gqa.state_dict()
    for i in range(gqa.cfg.n_layer):
        for kind in ("weight", "bias"):
            key = f"blocks.{i}.attn.qkv.{kind}"
            rest = state[key].shape[1:]  # (C,) for the weight, () for the bias
            q, k, v = state[key].split([H * D, n_kv_head * D, n_kv_head * D])
            k = k.view(n_kv_head, D, *rest).repeat_interleave(groups, 0).view(H * D, *rest)
            v = v.view(n_kv_head, D, *rest).repeat_interleave(groups, 0).view(H * D, *rest)
            state[key] = torch.cat([q, k, v])  # (3C, ...): the MHA layout
    mha.load_state_dict(state)
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(gqa(idx), mha(idx), atol=1e-5, rtol=1e-5)


# --- positions


@pytest.mark.parametrize("scaling, factor", [("none", 1.0), ("linear", 2.0), ("yarn", 4.0)])
def test_rope_scores_depend_only_on_relative_position(scaling, factor):
    cfg = ModelConfig(n_head=1, n_embd=16, seq_len=64, pos_emb="rope")
    cfg = dataclasses.replace(cfg, rope_scaling=scaling, rope_factor=factor)
    rotary = Rotary(cfg)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, cfg.head_dim, generator=g).double()

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q, *rotary(torch.tensor([m])))
        kn = apply_rope(k, *rotary(torch.tensor([n])))
        return (qm * kn).sum()

    for m, n, s in [(5, 2, 7), (3, 3, 40), (10, 0, 33), (0, 9, 1)]:
        torch.testing.assert_close(score(m + s, n + s), score(m, n), atol=1e-5, rtol=1e-5)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3  # it does depend on the relative position
    # rotation keeps the norm; YaRN's attention factor scales q and k each by 0.1 ln s + 1
    mscale = 0.1 * math.log(factor) + 1.0 if scaling == "yarn" else 1.0
    rotated = apply_rope(q, *rotary(torch.tensor([17])))
    torch.testing.assert_close(rotated.norm(), q.norm() * mscale, atol=1e-5, rtol=1e-5)


def test_linear_rope_scaling_is_position_interpolation():
    """Factor 2 at position 2p is plain RoPE at position p."""
    plain = Rotary(ModelConfig(n_head=2, n_embd=32, seq_len=64, pos_emb="rope"))
    linear = Rotary(
        ModelConfig(
            n_head=2, n_embd=32, seq_len=64, pos_emb="rope", rope_scaling="linear", rope_factor=2
        )
    )
    p = torch.arange(32)
    for a, b in zip(linear(2 * p), plain(p), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(linear(p)[1], plain(p)[1])


def test_yarn_keeps_high_and_interpolates_low_frequencies():
    s = 4.0
    cfg = ModelConfig(n_head=1, n_embd=64, seq_len=1024, pos_emb="rope")
    plain, _ = rope_frequencies(cfg)
    yarn, mscale = rope_frequencies(dataclasses.replace(cfg, rope_scaling="yarn", rope_factor=s))
    ratio = yarn / plain  # (D/2,), from highest to lowest frequency
    assert ratio[0] == pytest.approx(1.0)  # many turns over the original context: kept
    assert ratio[-1] == pytest.approx(1 / s)  # less than a turn: linearly interpolated
    assert torch.all(ratio[1:] <= ratio[:-1] + 1e-7)  # a monotone blend in between
    assert ((ratio > 1 / s + 1e-4) & (ratio < 1 - 1e-4)).any()
    assert mscale == pytest.approx(0.1 * math.log(s) + 1.0)


def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(alibi_slopes(8), 2.0 ** -torch.arange(1.0, 9.0))
    assert torch.allclose(alibi_slopes(4), 2.0 ** -torch.tensor([2.0, 4.0, 6.0, 8.0]))
    # 6 heads: the 4-head slopes, then every other slope of the 8-head sequence
    assert torch.allclose(alibi_slopes(6), 2.0 ** -torch.tensor([2.0, 4, 6, 8, 1, 3]))


# --- sliding window and attention sinks


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("n_layer", [1, 2])
def test_sliding_window_cuts_influence_exactly(backend, n_layer):
    """Each layer reaches window-1 tokens back, so n_layer layers reach n_layer*(window-1)."""
    w, t = 4, T - 1
    model = build(make_cfg({"window": w, "attn_backend": backend}, n_layer=n_layer))
    seen = embedding_with_grad(model)
    model(tokens())[0, t].sum().backward()
    grad = seen[0].grad[0].abs().sum(dim=-1)  # (T,) influence of each position on t
    reach = n_layer * (w - 1)
    assert torch.all(grad[: t - reach] == 0)
    assert torch.all(grad[t - reach : t + 1] > 0)
    assert torch.all(grad[t + 1 :] == 0)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_global_tokens_are_seen_outside_the_window(backend):
    w, n_global, t = 3, 2, T - 1
    kwargs = {"window": w, "global_tokens": n_global, "attn_backend": backend}
    model = build(make_cfg(kwargs, n_layer=1))
    seen = embedding_with_grad(model)
    model(tokens())[0, t].sum().backward()
    grad = seen[0].grad[0].abs().sum(dim=-1)  # (T,)
    assert torch.all(grad[:n_global] > 0)  # the sinks, far outside the window
    assert torch.all(grad[n_global : t - w + 1] == 0)
    assert torch.all(grad[t - w + 1 : t + 1] > 0)


def test_window_pattern_picks_sliding_and_full_blocks():
    cfg = make_cfg({"window": 4, "window_pattern": "SSL"}, n_layer=5)
    assert [cfg.layer_window(i) for i in range(5)] == [4, 4, None, 4, 4]
    model = GPT(cfg)
    assert [b.attn.window for b in model.blocks] == [4, 4, None, 4, 4]


# --- document masking


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_doc_mask_blocks_gradient_across_documents(backend):
    model = build(make_cfg({"doc_mask": True, "pos_emb": "rope", "attn_backend": backend}))
    starts = torch.zeros(1, T, dtype=torch.bool)
    starts[0, [0, 6]] = True
    seen = embedding_with_grad(model)
    model(tokens()[:1], doc_starts=starts)[0, 6:].sum().backward()
    grad = seen[0].grad[0].abs().sum(dim=-1)  # (T,)
    assert torch.all(grad[:6] == 0)
    assert torch.all(grad[6:] > 0)


@pytest.mark.parametrize("pos_emb", ["rope", "learned", "alibi"])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_doc_mask_restarts_positions(pos_emb, backend):
    """Document 2 of a packed row gives the logits of the same tokens run as their own row."""
    model = build(make_cfg({"doc_mask": True, "pos_emb": pos_emb, "attn_backend": backend}))
    idx = tokens()[:1]
    starts = torch.zeros(1, T, dtype=torch.bool)
    starts[0, [0, 6]] = True
    with torch.no_grad():
        packed = model(idx, doc_starts=starts)
        alone = model(idx[:, 6:])
        first = model(idx[:, :6])
        unmasked = model(idx)
    torch.testing.assert_close(packed[:, 6:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, :6], first, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[:, 6:], alone, atol=1e-3)  # the mask did something


def test_doc_positions_restart_at_each_start():
    model = GPT(make_cfg({"doc_mask": True}))
    starts = torch.zeros(1, 10, dtype=torch.bool)
    starts[0, [0, 4, 5]] = True
    expected = torch.tensor([[0, 1, 2, 3, 0, 0, 1, 2, 3, 4]])
    assert torch.equal(model._positions(10, starts, "cpu"), expected)
    unmarked = torch.zeros(1, 10, dtype=torch.bool)  # a row that starts mid-document
    unmarked[0, 6] = True
    assert torch.equal(model._positions(10, unmarked, "cpu")[0, 5:8], torch.tensor([5, 0, 1]))


def test_doc_starts_need_doc_mask():
    model = GPT(make_cfg({}))
    with pytest.raises(ValueError, match="doc_mask is off"):
        model(tokens(), doc_starts=torch.ones(B, T, dtype=torch.bool))


# --- other variants do what they say


def test_qk_norm_makes_attention_invariant_to_query_key_scale():
    def scaled_logits(qk_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model = build(make_cfg({"qk_norm": qk_norm, "bias": False}, n_layer=1))
        idx = tokens()
        with torch.no_grad():
            before = model(idx)
            qk_rows = 2 * model.cfg.n_embd  # q and k rows of qkv (MHA: C each)
            model.blocks[0].attn.qkv.weight[:qk_rows] *= 10.0
            return before, model(idx)

    before, after = scaled_logits(qk_norm=True)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    before, after = scaled_logits(qk_norm=False)
    assert not torch.allclose(after, before, atol=1e-2)


def test_logit_softcap_bounds_logits():
    cap = 2.0
    model = build(make_cfg({"logit_softcap": cap}))
    uncapped = clone_with(model, logit_softcap=None)
    idx = tokens()
    with torch.no_grad():
        raw, capped = uncapped(idx), model(idx)
    assert raw.abs().max() > cap  # the cap is active in this test
    assert capped.abs().max() < cap
    torch.testing.assert_close(capped, cap * torch.tanh(raw / cap))


def test_zero_init_proj_blocks_start_as_identity():
    """With zero output projections every block adds nothing: logits = head(ln_f(embedding))."""
    torch.manual_seed(0)
    model = GPT(make_cfg({"zero_init_proj": True, "mlp": "swiglu"})).eval()
    for block in model.blocks:
        assert torch.all(block.attn.proj.weight == 0) and torch.all(block.mlp.proj.weight == 0)
    idx = tokens()
    with torch.no_grad():
        x = model.wte(idx) + model.wpe(torch.arange(T))
        torch.testing.assert_close(model(idx), model.lm_head(model.ln_f(x)))


def test_embed_scale_and_untied_embeddings():
    torch.manual_seed(0)
    model = GPT(make_cfg({"embed_scale": True, "tie_embeddings": False, "pos_emb": "none"}))
    assert model.lm_head.weight is not model.wte.weight
    inputs = []
    model.drop.register_forward_hook(lambda _m, args, _out: inputs.append(args[0]))
    idx = tokens()
    model(idx)
    torch.testing.assert_close(inputs[0], model.wte(idx) * math.sqrt(model.cfg.n_embd))


def test_norm_variants_pick_the_right_modules():
    rms = GPT(make_cfg({"norm": "rmsnorm", "qk_norm": True}))
    assert isinstance(rms.ln_f, torch.nn.RMSNorm) and isinstance(
        rms.blocks[0].ln_1, torch.nn.RMSNorm
    )
    bare = GPT(make_cfg({"norm_weight": False, "qk_norm": True}))
    norm_params = [n for n, _ in bare.named_parameters() if "ln" in n or "norm" in n]
    assert norm_params == []


# --- multi-token prediction


def test_mtp_off_is_the_base_model():
    base = build(make_cfg({}))
    mtp = GPT(dataclasses.replace(base.cfg, mtp_heads=2)).eval()
    missing, unexpected = mtp.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("mtp.") for k in missing)
    idx, targets = tokens(), tokens(seed=2)
    with torch.no_grad():
        assert torch.equal(mtp(idx), base(idx))
        base_loss, base_stats = base(idx, targets)
        loss, stats = mtp(idx, targets)
        assert torch.equal(stats["ce"], base_stats["ce"])
        assert set(stats) == {"ce", "mtp_ce_1", "mtp_ce_2"}
        assert loss > stats["ce"]
        expected = stats["ce"] + 0.3 * (stats["mtp_ce_1"] + stats["mtp_ce_2"])
        torch.testing.assert_close(loss, expected)

        zero = clone_with(mtp, mtp_weights=(0.0, 0.0))
        zero_loss, _ = zero(idx, targets)
        assert torch.equal(zero_loss, base_loss)


def test_mtp_head_i_predicts_i_tokens_further_ahead():
    model = build(make_cfg({"mtp_heads": 2}))
    trunk = []
    model.ln_f.register_forward_hook(lambda _m, args, _out: trunk.append(args[0]))
    idx, targets = tokens(), tokens(seed=2)
    with torch.no_grad():
        _, stats = model(idx, targets)
        for i, head in enumerate(model.mtp, start=1):
            ahead = model.logits(head(trunk[0], AttnContext()))[:, : T - i]  # (B, T-i, V)
            ce = F.cross_entropy(ahead.reshape(-1, V), targets[:, i:].reshape(-1))
            torch.testing.assert_close(stats[f"mtp_ce_{i}"], ce)


# --- vocabulary padding


def test_vocab_padding_is_invisible():
    padded = build(make_cfg({}, vocab_multiple=64, tie_embeddings=False))
    assert padded.cfg.padded_vocab == 64 and padded.wte.weight.shape[0] == 64
    assert make_cfg({}, vocab_multiple=16).padded_vocab == 64  # 50 -> 64
    assert make_cfg({}, vocab_multiple=7).padded_vocab == 56
    plain = GPT(dataclasses.replace(padded.cfg, vocab_multiple=1)).eval()
    state = padded.state_dict()
    state = {k: v[:V] if k in ("wte.weight", "lm_head.weight") else v for k, v in state.items()}
    plain.load_state_dict(state)
    with torch.no_grad():
        padded.lm_head.weight[V:] = 100.0  # huge padding rows must still get no probability
    idx, targets = tokens(), tokens(seed=2)
    logits = padded(idx)
    assert logits.shape == (B, T, V)
    torch.testing.assert_close(logits, plain(idx))
    loss, _ = padded(idx, targets)
    torch.testing.assert_close(loss, plain(idx, targets)[0])


def test_padding_rows_get_no_gradient():
    model = build(make_cfg({}, vocab_multiple=64))
    loss, _ = model(tokens(), tokens(seed=2))
    loss.backward()
    assert torch.all(model.wte.weight.grad[V:] == 0)
    assert model.wte.weight.grad[:V].abs().sum() > 0


# --- config validation


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: ModelConfig(n_head=4, n_embd=32, n_kv_head=3),
            "n_kv_head 3 must be >= 1 and divide",
        ),
        (lambda: ModelConfig(window=0), "window must be a positive"),
        (lambda: MoEConfig(n_experts=2, top_k=3), "top_k 3 must be between 1 and"),
        (lambda: ModelConfig(n_head=4, n_embd=36, pos_emb="rope"), "head dimension must be even"),
        (lambda: from_dict(ModelConfig, {"attn_backend": "cuda"}), "attn_backend='cuda' is not"),
        (lambda: ModelConfig(window=4, window_pattern="SLX"), "window_pattern 'SLX' may only"),
        (lambda: ModelConfig(window_pattern="SL"), "window_pattern needs model.window"),
        (lambda: ModelConfig(mtp_heads=2, mtp_weights=(0.3,)), "mtp_weights has 1 entries"),
        (lambda: ModelConfig(n_layer=2, moe=MoEConfig(n_experts=2, layers=(2,))), "outside"),
    ],
)
def test_config_validation_errors(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


# --- training


TRAINING_VARIANTS = {
    "llama": VARIANTS["llama"],
    "modern": {
        "pos_emb": "rope",
        "qk_norm": True,
        "mlp": "relu2",
        "zero_init_proj": True,
        "tie_embeddings": False,
        "logit_softcap": 15.0,
        "bias": False,
    },
    "moe": {"moe": MoEConfig(n_experts=4, top_k=2, capacity_factor=1.5)},
}


@pytest.mark.parametrize("name", TRAINING_VARIANTS)
def test_variant_trains(name):
    torch.manual_seed(0)
    model = GPT(make_cfg(TRAINING_VARIANTS[name]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx, targets = tokens(), tokens(seed=2)
    losses = []
    for _ in range(30):
        loss, _ = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.3 * losses[0]
