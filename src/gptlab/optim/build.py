"""build_optimizer: (name, parameter) pairs + OptimConfig -> one torch optimizer.

- `name=adamw` (default): torch's fused AdamW (one kernel for the whole update where the device
  supports it) with groups "decay" (dim >= 2) and "no_decay". This is the original recipe, kept
  as is so default runs and their checkpoints are unchanged.
- `name=muon`, or `cautious_wd`: our `MuonAdamW`, Muon for the hidden matrices and AdamW for
  embeddings, head, norms and biases (optim/groups.py). With `name=adamw` and `cautious_wd` it
  has AdamW groups only (torch's AdamW cannot mask its decay).

Every group carries "name" and "kind"; `apply_schedule` sets lr, weight_decay and momentum.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gptlab.optim.config import OptimConfig
from gptlab.optim.groups import GROUP_KINDS, split_params
from gptlab.optim.lazy_compiler import defer_compiler_import
from gptlab.optim.muon import MuonAdamW
from gptlab.optim.schedule import group_peaks

FUSED_DEVICES = ("cpu", "cuda", "mps")


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]],
    cfg: OptimConfig,
    compile_orthogonalize: bool = False,
    orthogonalize_dtype: torch.dtype | None = None,
) -> torch.optim.Optimizer:
    """The optimizer `cfg` asks for, over the trainable parameters (see module docstring).
    `compile_orthogonalize` compiles Muon's orthogonalisation with torch.compile;
    `orthogonalize_dtype` is the dtype it computes in (None: bf16 on CUDA, else exact)."""
    defer_compiler_import()  # building an optimizer no longer imports torch._dynamo (~1 s)
    split = split_params(named_params, cfg.name)
    groups = []
    for name, pairs in split.items():
        kind = GROUP_KINDS[name]
        lr, weight_decay = group_peaks(name, kind, cfg)
        groups.append(
            {
                "params": [p for _, p in pairs],
                "name": name,
                "kind": kind,
                "lr": lr,
                "weight_decay": weight_decay,
            }
        )
    if cfg.name == "adamw" and not cfg.cautious_wd:
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
        )
    defaults = {
        "lr": cfg.lr,
        "weight_decay": 0.0,
        "betas": (cfg.beta1, cfg.beta2),
        "eps": cfg.eps,
        "momentum": cfg.muon_momentum_start,
        "nesterov": cfg.muon_nesterov,
        "orthogonalizer": cfg.muon_orthogonalizer,
        "ns_steps": cfg.muon_ns_steps,
        "cautious_wd": cfg.cautious_wd,
    }
    return MuonAdamW(
        groups,
        defaults,
        compile_orthogonalize=compile_orthogonalize,
        orthogonalize_dtype=orthogonalize_dtype,
    )
