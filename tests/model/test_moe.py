"""MoE routing, dispatch, capacity, balancing losses and stats do what moe.py says.

Legend: N tokens, C width, E experts, K top-k.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.model.layers import make_mlp
from gptlab.model.moe import MoE

C = 32


def moe_cfg(**moe) -> ModelConfig:
    shape = dict(n_layer=2, n_head=4, n_embd=C, seq_len=16, vocab_size=50, vocab_multiple=1)
    return ModelConfig(**shape, moe=MoEConfig(**moe))


def make_moe(cfg: ModelConfig, seed: int = 0) -> MoE:
    """A standalone MoE layer with random weights (its stacks are created empty)."""
    torch.manual_seed(seed)
    moe = MoE(cfg)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if name in ("w_in", "w_out"):
                p.copy_(torch.randn(p.shape) * p.shape[1] ** -0.5)
            elif name in ("b_in", "b_out"):
                p.copy_(0.1 * torch.randn(p.shape))
    return moe


def reference_moe(moe: MoE, x_NC: torch.Tensor) -> torch.Tensor:
    """Loop over tokens and their chosen experts: sum_i w_i * expert_{e_i}(x), renormalised."""
    probs_NE = moe.router(x_NC).float().softmax(dim=-1)
    top_NK = probs_NE.topk(moe.top_k, dim=-1)
    w_NK = top_NK.values
    if moe.top_k > 1:
        w_NK = w_NK / w_NK.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x_NC)
    for n in range(x_NC.size(0)):
        for w, e in zip(w_NK[n], top_NK.indices[n], strict=True):
            out[n] += w * moe.experts(x_NC[n].expand(moe.n_experts, 1, C))[e, 0]
    return out


@pytest.mark.parametrize("mlp", ["gelu", "swiglu", "relu2"])
@pytest.mark.parametrize("bias", [True, False])
def test_single_expert_is_the_dense_mlp(mlp, bias):
    cfg = dataclasses.replace(
        moe_cfg(n_experts=1, top_k=1, capacity_factor=None), mlp=mlp, bias=bias
    )
    moe = make_moe(cfg)
    dense = make_mlp(cfg)
    with torch.no_grad():  # nn.Linear stores (out, in); the expert stacks are (E, in, out)
        moe.w_in[0] = dense.fc.weight.t()
        moe.w_out[0] = dense.proj.weight.t()
        if bias:
            moe.b_in[0] = dense.fc.bias
            moe.b_out[0] = dense.proj.bias
    x = torch.randn(2, 8, C)
    out, stats = moe(x)
    torch.testing.assert_close(out, dense(x), atol=1e-5, rtol=1e-5)
    assert stats["dropped"] == 0


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_every_token_reaches_exactly_top_k_distinct_experts(top_k):
    moe = make_moe(moe_cfg(n_experts=6, top_k=top_k, capacity_factor=None))
    N = 40
    r = moe.route(torch.randn(N, C))
    assert r.keep.all() and r.expert.numel() == N * top_k
    assert r.counts.sum() == N * top_k
    for n in range(N):
        experts = r.expert[r.token == n]
        assert experts.numel() == top_k and experts.unique().numel() == top_k
    # mixing weights: renormalised over the top-k, or the router probability itself for k = 1
    weight_sum = torch.zeros(N).index_add_(0, r.token, r.weight)
    expected = torch.ones(N) if top_k > 1 else r.probs.max(dim=-1).values
    torch.testing.assert_close(weight_sum, expected)
    # the chosen experts are the top-k of the router probabilities
    top = r.probs.topk(top_k, dim=-1).indices.sort(dim=-1).values  # (N, K)
    chosen = torch.stack([r.expert[r.token == n].sort().values for n in range(N)])
    assert torch.equal(chosen, top)
    # slots are 0..count-1 within each expert
    for e in range(moe.n_experts):
        assert torch.equal(r.slot[r.expert == e].sort().values, torch.arange(int(r.counts[e])))


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_vectorised_dispatch_matches_loop_reference(mlp):
    cfg = dataclasses.replace(moe_cfg(n_experts=4, top_k=2, capacity_factor=None), mlp=mlp)
    moe = make_moe(cfg)
    x = torch.randn(3, 7, C)
    out, _ = moe(x)
    ref = reference_moe(moe, x.reshape(-1, C)).view(3, 7, C)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_shared_experts_add_a_dense_mlp():
    cfg = moe_cfg(n_experts=4, top_k=2, n_shared_experts=2, d_expert=16)
    moe = make_moe(cfg)
    assert moe.shared.fc.out_features == 2 * 16  # n_shared * d_expert
    x = torch.randn(2, 5, C)
    out, _ = moe(x)
    routed = reference_moe(moe, x.reshape(-1, C)).view(2, 5, C)
    torch.testing.assert_close(out, routed + moe.shared(x), atol=1e-5, rtol=1e-5)


def test_capacity_drops_tokens_and_reports_the_fraction():
    E, K, N, cf = 4, 2, 32, 0.5
    moe = make_moe(moe_cfg(n_experts=E, top_k=K, capacity_factor=cf))
    with torch.no_grad():
        moe.router.weight[0] += 1.0  # skew the load so some experts overflow
    x = torch.randn(1, N, C)
    r = moe.route(x.view(N, C))
    assert r.capacity == 8  # ceil(0.5 * 32 * 2 / 4)
    expected_drops = (r.counts - r.capacity).clamp(min=0).sum()
    assert expected_drops > 0
    out, stats = moe(x)
    assert stats["dropped"] == expected_drops
    assert stats["assignments"] == N * K
    # each expert keeps its first `capacity` assignments, first choices before second choices
    for e in range(E):
        kept = r.keep & (r.expert == e)
        assert kept.sum() == min(int(r.counts[e]), r.capacity)
    first_choice = r.probs.argmax(dim=-1)  # (N,)
    is_first = r.expert == first_choice[r.token]
    for e in range(E):
        dropped_first = (~r.keep & is_first & (r.expert == e)).any()
        kept_second = (r.keep & ~is_first & (r.expert == e)).any()
        assert not (dropped_first and kept_second)
    # a token with every assignment dropped skips the MLP: the layer outputs zero for it
    lost = [n for n in range(N) if not r.keep[r.token == n].any()]
    assert lost
    for n in lost:
        assert torch.all(out[0, n] == 0)
    # and in the model, moe_drop_frac is dropped / assignments over the MoE layers
    model = GPT(moe_cfg(n_experts=E, top_k=K, capacity_factor=cf))
    captured = []
    for block in model.blocks:
        block.mlp.register_forward_hook(lambda _m, _a, o: captured.append(o[1]))
    idx = torch.randint(50, (2, 16))
    _, model_stats = model(idx, idx)
    dropped = sum(s["dropped"] for s in captured)
    torch.testing.assert_close(model_stats["moe_drop_frac"], dropped.float() / (2 * 2 * 16 * K))


def routed_inputs(N: int, E: int) -> torch.Tensor:
    """Token n is one-hot on channel n % E, and every token has a constant last channel."""
    x = torch.zeros(N, C)
    x[torch.arange(N), torch.arange(N) % E] = 1.0
    x[:, -1] = 1.0
    return x


def set_router(moe: MoE, balanced: bool) -> None:
    """Balanced: token n goes to expert n % E. Collapsed: every token goes to expert 0."""
    with torch.no_grad():
        moe.router.weight.zero_()
        if balanced:
            moe.router.weight[:, : moe.n_experts] = 10.0 * torch.eye(moe.n_experts)
        else:
            moe.router.weight[0, -1] = 10.0


def test_aux_loss_prefers_balanced_routing():
    E = 4
    moe = make_moe(moe_cfg(n_experts=E, top_k=1, capacity_factor=None))
    x = routed_inputs(32, E)[None]  # (1, N, C)
    set_router(moe, balanced=True)
    _, balanced = moe(x)
    assert torch.equal(balanced["tokens_per_expert"], torch.full((E,), 8))
    set_router(moe, balanced=False)
    _, collapsed = moe(x)
    assert torch.equal(collapsed["tokens_per_expert"], torch.tensor([32, 0, 0, 0]))
    # Switch loss: 1 when balanced, E when collapsed
    assert balanced["aux_loss"].item() == pytest.approx(1.0, abs=1e-3)
    assert collapsed["aux_loss"].item() == pytest.approx(E, abs=1e-2)
    # z-loss is mean(logsumexp(logits)^2)
    logits = moe.router(x[0])
    torch.testing.assert_close(collapsed["z_loss"], torch.logsumexp(logits, -1).square().mean())


def test_forward_never_changes_the_bias_balance_does():
    """The forward only reports loads (a recomputed forward must route the same); `balance`,
    called once per optimizer step, moves the bias toward the under-used experts."""
    E, rate = 4, 0.01
    moe = make_moe(moe_cfg(n_experts=E, top_k=1, bias_balancing=True, bias_update_rate=rate))
    set_router(moe, balanced=False)
    x = routed_inputs(32, E)[None]
    for mode in (moe.eval, moe.train):
        mode()
        _, stats = moe(x)
        assert torch.all(moe.expert_bias == 0)
    moe.balance(stats["tokens_per_expert"].float())
    torch.testing.assert_close(moe.expert_bias, torch.tensor([-rate, rate, rate, rate]))
    moe.balance(stats["tokens_per_expert"].float())
    torch.testing.assert_close(
        moe.expert_bias, torch.tensor([-2 * rate, 2 * rate, 2 * rate, 2 * rate])
    )


def test_model_balances_each_moe_layer_from_its_own_load():
    cfg = dataclasses.replace(
        moe_cfg(n_experts=3, top_k=1, bias_balancing=True, bias_update_rate=0.5), n_layer=2
    )
    model = GPT(cfg)
    idx = torch.randint(50, (2, 16))
    _, stats = model(idx, idx)
    assert stats["moe_layer_loads"].shape == (2, 3)
    torch.testing.assert_close(stats["moe_layer_loads"].sum(0), stats["moe_tokens_per_expert"])
    model.balance_experts(torch.tensor([[1.0, 2.0, 6.0], [3.0, 3.0, 3.0]]))
    torch.testing.assert_close(model.blocks[0].mlp.expert_bias, torch.tensor([0.5, 0.5, -0.5]))
    torch.testing.assert_close(model.blocks[1].mlp.expert_bias, torch.zeros(3))


def test_expert_bias_picks_experts_but_not_weights():
    E = 4
    moe = make_moe(moe_cfg(n_experts=E, top_k=1, bias_balancing=True))
    with torch.no_grad():
        moe.expert_bias[3] = 10.0
    r = moe.route(torch.randn(16, C))
    assert torch.all(r.expert == 3)
    torch.testing.assert_close(r.weight, r.probs[r.token, 3])  # the router's own probability


def test_moe_stats_reach_the_model_stats():
    cfg = dataclasses.replace(
        moe_cfg(n_experts=4, top_k=2, capacity_factor=None, aux_loss_coef=0.1, z_loss_coef=0.01),
        n_layer=3,
    )
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, every=2))
    model = GPT(cfg)
    assert [isinstance(b.mlp, MoE) for b in model.blocks] == [False, True, False]
    idx, targets = torch.randint(50, (2, 16)), torch.randint(50, (2, 16))
    loss, stats = model(idx, targets)
    assert {"moe_aux_loss", "moe_z_loss", "moe_drop_frac", "moe_tokens_per_expert"} <= set(stats)
    assert stats["moe_layer_loads"].shape == (1, 4)
    assert stats["moe_tokens_per_expert"].sum() == 2 * 16 * 2  # one MoE layer, N * K
    assert stats["moe_drop_frac"] == 0
    expected = stats["ce"] + 0.1 * stats["moe_aux_loss"] + 0.01 * stats["moe_z_loss"]
    torch.testing.assert_close(loss, expected)
    assert all(not v.requires_grad for v in stats.values())


def test_moe_layers_option_overrides_every():
    cfg = dataclasses.replace(moe_cfg(n_experts=2, top_k=1, layers=(0,)), n_layer=3)
    assert [cfg.is_moe_layer(i) for i in range(3)] == [True, False, False]


def test_moe_gradients_reach_router_and_experts():
    model = GPT(moe_cfg(n_experts=4, top_k=2))
    idx = torch.randint(50, (2, 16))
    loss, _ = model(idx, idx)
    loss.backward()
    moe = model.blocks[0].mlp
    assert moe.router.weight.grad.abs().sum() > 0
    assert (moe.w_in.grad.abs().sum(dim=(1, 2)) > 0).all()  # every expert got tokens
