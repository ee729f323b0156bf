"""Learning-rate schedule as a pure function of the step: linear warmup, then cosine decay.

lr(s) = lr * (s + 1) / warmup                         for s < warmup
lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2  with p = (s - warmup) / (max_steps - warmup)
"""

from __future__ import annotations

import math

from gptlab.optim.config import OptimConfig


def lr_at(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a `max_steps` run."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
