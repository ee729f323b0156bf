import math

import pytest
import torch

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.optim.build import build_optimizer
from gptlab.optim.config import OptimConfig
from gptlab.optim.muon import MuonAdamW, decay_term
from gptlab.optim.orthogonalize import newton_schulz
from gptlab.optim.schedule import apply_schedule

MUON = dict(name="muon", muon_orthogonalizer="newton_schulz", weight_decay=0.1)


def _reference_muon(W, grads, lr, mu, wd, nesterov=True):
    """Muon written out by hand: momentum, Nesterov, orthogonalise, scale, decoupled decay."""
    W, buf = W.clone(), torch.zeros_like(W)
    for g in grads:
        buf = mu * buf + (1 - mu) * g
        d = (1 - mu) * g + mu * buf if nesterov else buf
        u = newton_schulz(d) * 0.2 * math.sqrt(max(W.shape))
        W = W * (1 - lr * wd) - lr * u
    return W


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_matches_hand_written_reference(nesterov):
    W0 = torch.randn(24, 16)
    grads = [torch.randn(24, 16) for _ in range(3)]
    p = torch.nn.Parameter(W0.clone())
    cfg = OptimConfig(**MUON, muon_lr=0.01, muon_nesterov=nesterov, muon_momentum_warmup_steps=0)
    opt = build_optimizer([("blocks.0.mlp.fc.weight", p)], cfg)
    assert isinstance(opt, MuonAdamW) and opt.param_groups[0]["params"] == [p]
    for step, g in enumerate(grads):
        apply_schedule(opt, step + cfg.warmup_steps, 1000, cfg)  # past warmup: peak lr
        p.grad = g.clone()
        opt.step()
    ref = _reference_muon(W0, grads, lr=0.01, mu=0.95, wd=0.1, nesterov=nesterov)
    assert torch.allclose(p.detach(), ref, atol=1e-6)


def test_bf16_orthogonalisation_gives_nearly_the_exact_update():
    """bf16 Gram products (used wherever a run computes in bf16, CPU included) change the
    update by about bf16's precision, not its direction."""
    g = torch.randn(96, 64)
    updates = []
    for dtype in (None, torch.bfloat16):
        p = torch.nn.Parameter(torch.zeros(96, 64))
        opt = build_optimizer(
            [("blocks.0.mlp.fc.weight", p)],
            OptimConfig(**MUON, muon_lr=1.0),
            orthogonalize_dtype=dtype,
        )
        opt.param_groups[0]["weight_decay"] = 0.0
        p.grad = g.clone()
        opt.step()
        updates.append(p.detach().flatten())
    exact, bf16 = updates
    assert torch.nn.functional.cosine_similarity(exact, bf16, dim=0) > 0.99
    assert bf16.norm() == pytest.approx(exact.norm().item(), rel=0.05)


def test_muon_update_rms_is_about_adamw_like():
    p = torch.nn.Parameter(torch.zeros(64, 128))
    opt = build_optimizer([("blocks.0.attn.proj.weight", p)], OptimConfig(**MUON, muon_lr=1.0))
    opt.param_groups[0]["weight_decay"] = 0.0
    p.grad = torch.randn(64, 128)
    opt.step()
    assert p.detach().pow(2).mean().sqrt().item() == pytest.approx(0.2, rel=0.15)


def test_adamw_groups_match_torch_adamw():
    """The hybrid's own AdamW (used with muon or cautious_wd) equals torch's AdamW."""
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, cautious_wd=True)
    ours = build_optimizer(a.named_parameters(), cfg)
    assert isinstance(ours, MuonAdamW)
    for g in ours.param_groups:
        g["cautious_wd"] = False  # plain decay, to compare with torch
    ref = torch.optim.AdamW(
        [{"params": [b.weight], "weight_decay": 0.1}, {"params": [b.bias], "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.99),
        foreach=False,
    )
    x = torch.randn(4, 8)
    for _ in range(3):
        for m, o in ((a, ours), (b, ref)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-6)
    assert torch.allclose(a.bias, b.bias, atol=1e-6)


def test_cautious_decay_only_where_signs_agree():
    p = torch.tensor([1.0, 1.0, -1.0, -1.0])
    u = torch.tensor([0.5, -0.5, -0.5, 0.5])
    assert decay_term(p, u, 0.1, cautious=True).tolist() == pytest.approx([0.1, 0.0, -0.1, 0.0])
    assert decay_term(p, u, 0.1, cautious=False).tolist() == pytest.approx([0.1, 0.1, -0.1, -0.1])
    # through the optimizer: zero update direction of one sign, decay shows only where agreed
    w = torch.nn.Parameter(torch.tensor([[2.0, -2.0], [2.0, -2.0]]))
    opt = build_optimizer([("wte.weight", w)], OptimConfig(lr=0.1, cautious_wd=True))
    w.grad = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # Adam's first step: direction ~ sign(g)
    opt.step()
    d = 0.1 * 0.1 * 2.0  # lr * wd * |p|
    expected = torch.tensor([[2.0 - 0.1 - d, -2.0 - 0.1], [2.0 + 0.1, -2.0 + 0.1 + d]])
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def _tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40, **kw))


def _train(model, opt, steps, cfg, scaler=None, batch=None):
    g = torch.Generator().manual_seed(1)
    x, y = batch if batch is not None else (torch.randint(40, (4, 16), generator=g),) * 2
    losses = []
    for step in range(steps):
        apply_schedule(opt, step, steps, cfg)
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            loss, _ = model(x, y)
        losses.append(loss.item())
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
    return losses


@pytest.mark.parametrize("orth", ["polar_express", "newton_schulz"])
def test_muon_trains_a_tiny_model(orth):
    """Memorise one batch: 3.29 -> 0.14 in 30 steps (AdamW alone at lr 1e-2: 0.17)."""
    cfg = OptimConfig(name="muon", muon_orthogonalizer=orth, lr=1e-2, muon_lr=0.02, warmup_steps=2)
    model = _tiny_gpt()
    losses = _train(model, build_optimizer(model.named_parameters(), cfg), 30, cfg)
    assert losses[-1] < 0.2 * losses[0], losses


def test_muon_alone_lowers_the_loss():
    """With the AdamW groups all but frozen, the Muon matrices still learn (3.29 -> 3.08)."""
    cfg = OptimConfig(name="muon", lr=1e-5, min_lr=0.0, muon_lr=0.02, warmup_steps=2)
    model = _tiny_gpt()
    losses = _train(model, build_optimizer(model.named_parameters(), cfg), 30, cfg)
    assert losses[-1] < losses[0] - 0.1, losses


def test_state_dict_round_trip_gives_identical_next_step():
    cfg = OptimConfig(name="muon", cautious_wd=True, warmup_steps=2)
    a = _tiny_gpt()
    opt_a = build_optimizer(a.named_parameters(), cfg)
    _train(a, opt_a, 3, cfg)
    state = opt_a.state_dict()
    b = _tiny_gpt()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b.named_parameters(), cfg)
    opt_b.load_state_dict(state)
    for m, o in ((a, opt_a), (b, opt_b)):
        apply_schedule(o, 3, 10, cfg)
        x = torch.arange(32).reshape(2, 16) % 40
        m(x, x)[0].backward()
        o.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), n


def test_grad_scaler_fp16_unscales_and_skips_inf():
    cfg = OptimConfig(name="muon", warmup_steps=1)
    model = _tiny_gpt()
    opt = build_optimizer(model.named_parameters(), cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    losses = _train(model, opt, 10, cfg, scaler=scaler)
    assert losses[-1] < losses[0]
    # an inf gradient: the scaler skips the step and halves its scale
    before = [p.detach().clone() for p in model.parameters()]
    scale = scaler.get_scale()
    with torch.autocast("cpu", dtype=torch.float16):
        loss, _ = model(torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long))
    scaler.scale(loss * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == scale / 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_default_adamw_run_is_unchanged():
    """The default recipe sets exactly the lrs the original loop did (bit-identical weights)."""
    from gptlab.optim.schedule import lr_at

    cfg = OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=3)
    a, b = _tiny_gpt(), _tiny_gpt()
    new = build_optimizer(a.named_parameters(), cfg)
    params = [p for p in b.parameters()]
    old = torch.optim.AdamW(  # the original build: two groups by shape, fused where possible
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        eps=1e-8,
        fused=True,
    )
    x = torch.arange(32).reshape(2, 16) % 40
    for step in range(8):
        apply_schedule(new, step, 8, cfg)
        for group in old.param_groups:
            group["lr"] = lr_at(step, 8, cfg)
        for m, o in ((a, new), (b, old)):
            m(x, x)[0].backward()
            o.step()
            o.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_same_shape_matrices_orthogonalised_together_match_one_at_a_time():
    """The batched step (one orthogonalisation per shape group) equals the hand-written
    reference for every matrix of a group holding two shapes, two matrices each."""
    shapes = [(24, 16), (16, 16), (24, 16), (16, 16)]
    W0 = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    params = [torch.nn.Parameter(w.clone()) for w in W0]
    cfg = OptimConfig(**MUON, muon_lr=0.01, muon_momentum_warmup_steps=0)
    named = [(f"blocks.{i}.mlp.fc.weight", p) for i, p in enumerate(params)]
    opt = build_optimizer(named, cfg)
    for step, gs in enumerate(grads):
        apply_schedule(opt, step + cfg.warmup_steps, 1000, cfg)
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    for k, p in enumerate(params):
        ref = _reference_muon(W0[k], [gs[k] for gs in grads], lr=0.01, mu=0.95, wd=0.1)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-5, atol=1e-6)
