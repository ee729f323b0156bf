"""Learning-rate, weight-decay and Muon-momentum schedules as pure functions of the step.

Every LR schedule starts with the same linear warmup, lr (s + 1) / W for s < W, then follows
one of these shapes from lr down to min_lr, with p the progress through the decay in [0, 1]:

    constant  lr
    linear    min_lr + (lr - min_lr) (1 - p)                 p = (s - W) / (N - W)
    cosine    min_lr + (lr - min_lr) (1 + cos(pi p)) / 2     (the original recipe, the default)
    wsd       lr until D = N - round(decay_fraction N), then min_lr + (lr - min_lr) f(p) with
              p = (s - D) / (N - D) and f(p) = 1 - p, (1 + cos(pi p)) / 2 or 1 - sqrt(p)

Key decision: the schedule is one multiplier m(s) = lr_at(s) / lr shared by all groups, so each
group's own peak (lr for AdamW, muon_lr for Muon) is scaled alike and min_lr / lr is the floor
ratio of every group. A group whose peak is lr gets lr_at(s) itself, so the default run sets
exactly the learning rates it always did.
"""

from __future__ import annotations

import math
from typing import Any

from gptlab.optim.config import OptimConfig
from gptlab.optim.groups import GROUP_KINDS


def _decay_shape(progress: float, shape: str) -> float:
    """Fraction of (lr - min_lr) left at `progress` in [0, 1] through a decay."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"unknown decay shape {shape!r}")


def decay_start(max_steps: int, cfg: OptimConfig) -> int:
    """First step of the decay phase: the end of warmup, or for wsd the end of the stable phase."""
    if cfg.schedule == "wsd":
        return max(cfg.warmup_steps, max_steps - round(cfg.decay_fraction * max_steps))
    return cfg.warmup_steps


def lr_at(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Learning rate of the AdamW groups at optimizer step `step` (0-based) of a `max_steps` run."""
    if step < cfg.warmup_steps:
        return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)  # a fractional step: <= lr
    if cfg.schedule == "constant":
        return cfg.lr
    start = decay_start(max_steps, cfg)
    if step < start:
        return cfg.lr  # wsd's stable phase
    progress = min(1.0, (step - start) / max(1, max_steps - start))
    shape = {"linear": "linear", "cosine": "cosine", "wsd": cfg.decay_shape}[cfg.schedule]
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * _decay_shape(progress, shape)


def wd_multiplier(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Factor on weight_decay: 1 (constant), 1 - s / N (linear) or lr_at(s) / lr (lr)."""
    if cfg.wd_schedule == "constant":
        return 1.0
    if cfg.wd_schedule == "linear":
        return max(0.0, 1.0 - step / max(1, max_steps))
    return lr_at(step, max_steps, cfg) / cfg.lr


def muon_momentum_at(step: int, cfg: OptimConfig) -> float:
    """Muon momentum: linear from muon_momentum_start to muon_momentum over the warmup steps.

    Low momentum early averages fewer of the large, fast-changing first gradients.
    """
    if step >= cfg.muon_momentum_warmup_steps:
        return cfg.muon_momentum
    frac = step / cfg.muon_momentum_warmup_steps
    return cfg.muon_momentum_start + (cfg.muon_momentum - cfg.muon_momentum_start) * frac


def group_peaks(group_name: str, kind: str, cfg: OptimConfig) -> tuple[float, float]:
    """(peak lr, weight decay) of a group named by optim/groups.py."""
    lr = cfg.muon_lr if kind == "muon" else cfg.lr
    return lr, 0.0 if group_name == "no_decay" else cfg.weight_decay


def schedule_step(
    step: int, max_steps: int, train_time_s: float, max_seconds: float, warmup_steps: int = 0
) -> float:
    """The (fractional) step the schedules are evaluated at. Without a time budget
    (max_seconds 0) the step itself. With one, warmup still counts steps (it tames the first
    updates, a count, not a duration); after it the progress through the rest of the schedule
    is max((step - W) / (N - W), train time / max_seconds), so the decay ends when the time runs
    out or the steps do, whichever comes first."""
    if max_seconds <= 0 or step < warmup_steps:
        return float(step)
    by_time = warmup_steps + min(1.0, train_time_s / max_seconds) * (max_steps - warmup_steps)
    return max(float(step), by_time)


def apply_schedule(
    optimizer: Any, step: float, max_steps: int, cfg: OptimConfig
) -> dict[str, float]:
    """Set every group's lr, weight_decay (and Muon momentum) for `step`; return them for logging.

    Peaks come from `cfg` and the group's name, not from the group dict, so a resumed run
    follows its current config even when the optimizer state was saved under another.
    """
    lr = lr_at(step, max_steps, cfg)
    wd_mult = wd_multiplier(step, max_steps, cfg)
    momentum = muon_momentum_at(step, cfg)
    for group in optimizer.param_groups:
        name = group.get("name", "decay")
        kind = group.get("kind", GROUP_KINDS.get(name, "adamw"))
        peak_lr, weight_decay = group_peaks(name, kind, cfg)
        group["lr"] = lr if peak_lr == cfg.lr else peak_lr * (lr / cfg.lr)
        group["weight_decay"] = weight_decay * wd_mult
        if kind == "muon":
            group["momentum"] = momentum
    out = {"lr": lr, "weight_decay": cfg.weight_decay * wd_mult}
    if cfg.name == "muon":
        out["muon_momentum"] = momentum
    return out
