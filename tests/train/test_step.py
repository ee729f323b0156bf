"""One optimizer step (train/step.py): accumulation, clipping, skipping, fp16 overflow and MoE
bias balancing, on a tiny model, one process. The 2-rank version is in test_moe_balance.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.runtime import make_runtime
from gptlab.train.health import HealthMonitor
from gptlab.train.memory import enable_activation_checkpointing
from gptlab.train.step import Stepper

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40, dropout=0.0)
MOE = dataclasses.replace(
    CFG, moe=MoEConfig(n_experts=4, top_k=1, bias_balancing=True, bias_update_rate=0.01)
)


def _batches(n: int, B: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, None]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(CFG.vocab_size, (B, CFG.seq_len), generator=g)
        out.append((x, torch.roll(x, -1, dims=1), None))
    return out


def _stepper(cfg: ModelConfig = CFG, *, clip: float = 0.0, lr: float = 0.1, scaler=None, **kw):
    torch.manual_seed(0)
    model = GPT(cfg)
    if kw.pop("checkpointing", False):
        enable_activation_checkpointing(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return Stepper(
        model=model,
        wrapped=model,
        optimizer=opt,
        scaler=scaler or torch.amp.GradScaler("cpu", enabled=False),
        health=HealthMonitor(max_bad_steps=kw.pop("max_bad_steps", 3)),
        runtime=make_runtime("cpu", "float32"),
        grad_clip=clip,
        seed=0,
    )


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_micro_batches_equal_one_batch_of_both():
    halves = _batches(2, B=2)
    (x0, y0, _), (x1, y1, _) = halves
    whole = [(torch.cat([x0, x1]), torch.cat([y0, y1]), None)]
    a, b = _stepper(), _stepper()
    ra = a.step(iter(halves), accum=2, micro_seen=0)
    rb = b.step(iter(whole), accum=1, micro_seen=0)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
    assert ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-4)
    for k, v in _params(a.model).items():
        torch.testing.assert_close(v, _params(b.model)[k], rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in a.model.parameters())  # dropped after the step


def test_clipping_bounds_the_update_and_reports_the_norm_before():
    s = _stepper(clip=0.01, lr=1.0)
    before = [p.detach().clone() for p in s.model.parameters()]
    r = s.step(iter(_batches(1, B=4)), accum=1, micro_seen=0)
    assert r.grad_norm > 0.01 and not r.skipped
    update = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(s.model.parameters(), before, strict=True)]
    )
    assert update.norm().item() == pytest.approx(0.01, rel=1e-3)  # SGD, lr 1: the clipped g


def test_a_nan_loss_is_skipped_and_nothing_changes(monkeypatch):
    s = _stepper()
    before = _params(s.model)
    forward = GPT.forward

    def nan_forward(self, *a, **kw):
        loss, stats = forward(self, *a, **kw)
        return loss * math.nan, stats

    monkeypatch.setattr(GPT, "forward", nan_forward)
    r = s.step(iter(_batches(2, B=2)), accum=2, micro_seen=0)
    assert r.skipped and not r.overflow and "skipped" in r.warnings[0]
    assert s.health.bad_in_a_row == 1 and s.health.skipped_steps == 1
    for k, v in _params(s.model).items():
        assert torch.equal(v, before[k])
    s.step(iter(_batches(1, B=2)), accum=1, micro_seen=2)
    with pytest.raises(GptlabError, match="training diverged: 3 steps in a row"):
        s.step(iter(_batches(1, B=2)), accum=1, micro_seen=3)


def test_fp16_overflow_is_skipped_counted_and_keeps_the_spike_average_clean():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # loss x scale overflows fp32
    s = _stepper(scaler=scaler)
    before = _params(s.model)
    r = s.step(iter(_batches(1, B=2)), accum=1, micro_seen=0)
    assert r.skipped and r.overflow and not math.isfinite(r.grad_norm) and r.warnings == []
    assert s.health.skipped_steps == 1 and s.health.bad_in_a_row == 0  # not a fault
    assert s.health.seen == 0 and s.health.grad_ema == 0.0  # inf never entered the average
    assert scaler.get_scale() < 2.0**127  # the scaler lowered its scale
    for k, v in _params(s.model).items():
        assert torch.equal(v, before[k])


def _loads(model: GPT, batches) -> torch.Tensor:
    with torch.no_grad():
        return sum(model(x, y)[1]["moe_layer_loads"].float() for x, y, _ in batches)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_expert_bias_moves_once_per_step_from_the_whole_step_load(checkpointing):
    s = _stepper(MOE, checkpointing=checkpointing)
    batches = _batches(3, B=2)
    load = _loads(s.model, batches)  # (L, E) over all three micro-batches, before the step
    s.step(iter(batches), accum=3, micro_seen=0)
    for moe, layer_load in zip([b.mlp for b in s.model.blocks], load, strict=True):
        torch.testing.assert_close(
            moe.expert_bias, 0.01 * torch.sign(layer_load.mean() - layer_load)
        )


def test_activation_checkpointing_routes_and_trains_the_same():
    """The recompute in backward routes as the forward did: same gradients, same bias."""
    plain, ckpt = _stepper(MOE), _stepper(MOE, checkpointing=True)
    for k in range(3):
        batches = _batches(2, B=2, seed=k)
        rp = plain.step(iter(batches), accum=2, micro_seen=2 * k)
        rc = ckpt.step(iter(batches), accum=2, micro_seen=2 * k)
        assert rp.loss == pytest.approx(rc.loss, rel=1e-5)
    for k, v in _params(plain.model).items():
        torch.testing.assert_close(v, _params(ckpt.model)[k], rtol=1e-5, atol=1e-6)
