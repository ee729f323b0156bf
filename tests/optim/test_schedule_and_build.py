import math

import pytest
import torch

from gptlab.optim.build import build_optimizer
from gptlab.optim.config import OptimConfig
from gptlab.optim.schedule import lr_at


def test_schedule_hand_computed_points():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, 110, cfg) == pytest.approx(1e-4)  # (0 + 1) / 10 of peak
    assert lr_at(9, 110, cfg) == pytest.approx(1e-3)  # end of warmup
    assert lr_at(10, 110, cfg) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, 110, cfg) == pytest.approx(5.5e-4)  # halfway: (lr + min_lr) / 2
    assert lr_at(110, 110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, 110, cfg) == pytest.approx(1e-4)  # past the end: min_lr
    p = 0.25
    expected = 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * p))
    assert lr_at(35, 110, cfg) == pytest.approx(expected)


def test_no_warmup():
    cfg = OptimConfig(lr=2e-3, min_lr=0.0, warmup_steps=0)
    assert lr_at(0, 100, cfg) == pytest.approx(2e-3)


def test_decay_groups_by_shape():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model.named_parameters(), OptimConfig(weight_decay=0.1))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert [p.shape for p in by_name["decay"]["params"]] == [torch.Size([4, 4])]
    assert len(by_name["no_decay"]["params"]) == 3 and by_name["no_decay"]["weight_decay"] == 0


def test_adamw_step_matches_torch_reference():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 8)
    b = torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.99)
    ours = build_optimizer(a.named_parameters(), cfg)
    ref = torch.optim.AdamW(
        [{"params": [b.weight], "weight_decay": 0.1}, {"params": [b.bias], "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.99),
        eps=1e-8,
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


@pytest.mark.parametrize(
    "kwargs, match",
    [({"lr": -1.0}, "optim.lr"), ({"min_lr": 1.0}, "optim.min_lr"), ({"beta2": 1.0}, "beta2")],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig(**kwargs)
