import math

import pytest
import torch

from gptlab.config import from_dict
from gptlab.optim.build import build_optimizer
from gptlab.optim.config import OptimConfig
from gptlab.optim.schedule import (
    apply_schedule,
    decay_start,
    lr_at,
    muon_momentum_at,
    wd_multiplier,
)

BASE = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10)
N = 110


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "wsd"])
def test_warmup_is_shared(schedule):
    cfg = OptimConfig(**BASE, schedule=schedule)
    assert lr_at(0, N, cfg) == pytest.approx(1e-4)
    assert lr_at(4, N, cfg) == pytest.approx(5e-4)
    assert lr_at(9, N, cfg) == pytest.approx(1e-3)  # warmup end: peak
    assert lr_at(10, N, cfg) == pytest.approx(1e-3)  # first step after warmup: still peak


def test_constant_and_linear():
    const = OptimConfig(**BASE, schedule="constant")
    assert lr_at(60, N, const) == lr_at(N, N, const) == 1e-3
    lin = OptimConfig(**BASE, schedule="linear")
    assert lr_at(35, N, lin) == pytest.approx(1e-4 + 0.9e-3 * 0.75)
    assert lr_at(60, N, lin) == pytest.approx(5.5e-4)
    assert lr_at(N, N, lin) == pytest.approx(1e-4)
    assert lr_at(10 * N, N, lin) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "shape, frac_left_at_half",
    [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))],
)
def test_wsd(shape, frac_left_at_half):
    cfg = OptimConfig(**BASE, schedule="wsd", decay_fraction=0.2, decay_shape=shape)
    n = 100
    assert decay_start(n, cfg) == 80
    for step in (10, 50, 79, 80):  # stable phase, up to and including the decay start
        assert lr_at(step, n, cfg) == 1e-3
    assert lr_at(90, n, cfg) == pytest.approx(1e-4 + 0.9e-3 * frac_left_at_half)
    assert lr_at(n, n, cfg) == pytest.approx(1e-4)  # end: min_lr
    assert lr_at(n + 50, n, cfg) == pytest.approx(1e-4)
    quarter = {"linear": 0.75, "cosine": 0.5 * (1 + math.cos(math.pi / 4)), "sqrt": 0.5}[shape]
    assert lr_at(85, n, cfg) == pytest.approx(1e-4 + 0.9e-3 * quarter)


def test_wsd_decay_never_starts_inside_warmup():
    cfg = OptimConfig(**BASE, schedule="wsd", decay_fraction=1.0)
    assert decay_start(N, cfg) == 10
    assert lr_at(60, N, cfg) == pytest.approx(lr_at(60, N, OptimConfig(**BASE, schedule="linear")))


def test_muon_momentum_warmup():
    cfg = OptimConfig(muon_momentum_start=0.85, muon_momentum=0.95, muon_momentum_warmup_steps=300)
    assert muon_momentum_at(0, cfg) == pytest.approx(0.85)
    assert muon_momentum_at(150, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(300, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(5000, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(0, OptimConfig(muon_momentum_warmup_steps=0)) == 0.95


def test_wd_schedules():
    assert wd_multiplier(50, 100, OptimConfig(**BASE)) == 1.0
    assert wd_multiplier(50, 100, OptimConfig(**BASE, wd_schedule="linear")) == 0.5
    assert wd_multiplier(100, 100, OptimConfig(**BASE, wd_schedule="linear")) == 0.0
    cfg = OptimConfig(**BASE, wd_schedule="lr")
    assert wd_multiplier(4, N, cfg) == pytest.approx(0.5)  # half-way through warmup
    assert wd_multiplier(N, N, cfg) == pytest.approx(0.1)  # min_lr / lr


def test_apply_schedule_scales_every_group_from_its_own_peak():
    cfg = OptimConfig(
        **BASE, name="muon", muon_lr=0.02, weight_decay=0.1, wd_schedule="linear", schedule="linear"
    )
    params = [
        ("blocks.0.mlp.fc.weight", torch.nn.Parameter(torch.zeros(8, 4))),
        ("wte.weight", torch.nn.Parameter(torch.zeros(8, 4))),
        ("ln_f.weight", torch.nn.Parameter(torch.zeros(4))),
    ]
    opt = build_optimizer(params, cfg)
    logged = apply_schedule(opt, 60, N, cfg)  # half-way through the decay, wd at 60 / 110
    mult, wd = 0.55, 0.1 * (1 - 60 / N)
    assert logged == pytest.approx({"lr": 5.5e-4, "weight_decay": wd, "muon_momentum": 0.87})
    by = {g["name"]: g for g in opt.param_groups}
    assert by["muon"]["lr"] == pytest.approx(0.02 * mult) and by["muon"]["momentum"] == 0.87
    assert by["decay"]["lr"] == pytest.approx(5.5e-4)
    assert by["muon"]["weight_decay"] == by["decay"]["weight_decay"] == pytest.approx(wd)
    assert by["no_decay"]["weight_decay"] == 0.0


def test_apply_schedule_default_sets_lr_at_exactly():
    cfg = OptimConfig(**BASE)
    opt = build_optimizer(torch.nn.Linear(4, 4).named_parameters(), cfg)
    for step in (0, 9, 35, 77, N):
        logged = apply_schedule(opt, step, N, cfg)
        assert logged == {"lr": lr_at(step, N, cfg), "weight_decay": 0.1}
        assert [g["lr"] for g in opt.param_groups] == [lr_at(step, N, cfg)] * 2  # bit-equal
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_apply_schedule_accepts_groups_saved_before_kind_existed():
    """Optimizer state saved by older versions has groups without "kind"; they are AdamW."""
    cfg = OptimConfig(**BASE)
    opt = build_optimizer(torch.nn.Linear(4, 4).named_parameters(), cfg)
    for g in opt.param_groups:
        del g["kind"]
    apply_schedule(opt, 50, N, cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "sgd"}, "optim.name must be one of adamw, muon, got 'sgd'"),
        ({"name": "muon", "muon_lr": 0.0}, "optim.muon_lr must be > 0"),
        ({"name": "muon", "muon_momentum": 1.0}, r"optim.muon_momentum must be in \[0, 1\)"),
        ({"muon_momentum_start": -0.1}, "optim.muon_momentum_start"),
        ({"muon_momentum_warmup_steps": -1}, "optim.muon_momentum_warmup_steps"),
        ({"muon_ns_steps": 6}, r"optim.muon_ns_steps must be in \[1, 5\] for .*polar_express"),
        ({"muon_ns_steps": 0, "muon_orthogonalizer": "newton_schulz"}, "optim.muon_ns_steps"),
        ({"muon_orthogonalizer": "svd"}, "optim.muon_orthogonalizer must be one of"),
        ({"schedule": "step"}, "optim.schedule must be one of constant, linear, cosine, wsd"),
        ({"decay_fraction": 0.0}, r"optim.decay_fraction must be in \(0, 1\]"),
        ({"decay_shape": "exp"}, "optim.decay_shape"),
        ({"wd_schedule": "cosine"}, "optim.wd_schedule"),
    ],
)
def test_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        OptimConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_from_dict_rejects_bad_choice_and_old_configs_still_load():
    with pytest.raises(ValueError, match="optim.name='lion' is not one of"):
        from_dict(OptimConfig, {"name": "lion"}, prefix="optim.")
    old = {"lr": 4e-3, "min_lr": 4e-4, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.99,
           "eps": 1e-8, "warmup_steps": 30, "grad_clip": 1.0}  # fmt: skip
    cfg = from_dict(OptimConfig, old)
    assert cfg.name == "adamw" and cfg.schedule == "cosine" and cfg.wd_schedule == "constant"
