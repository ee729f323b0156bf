"""Build AdamW with two parameter groups: matrices decay, vectors (biases, norm gains) do not.

Sorting is by shape alone (dim >= 2 decays), so the optimizer never needs the model class.
Fused AdamW (one kernel for the whole update) is used where torch supports it for the device.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gptlab.optim.config import OptimConfig

FUSED_DEVICES = ("cpu", "cuda", "mps")


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig
) -> torch.optim.AdamW:
    params = [p for _, p in named_params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
    )
