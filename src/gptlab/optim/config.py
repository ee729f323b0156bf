"""OptimConfig: the optimizer (AdamW, or Muon for hidden matrices) and the schedules.

The defaults are the original recipe (fused AdamW, linear warmup then cosine decay), so configs
and checkpoints written before Muon and the other schedules existed load and train unchanged;
every later field only adds an option. Docs: docs/training.md (Optimizers, Schedules).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

OptimName = Literal["adamw", "muon"]
Orthogonalizer = Literal["polar_express", "newton_schulz"]
Schedule = Literal["constant", "linear", "cosine", "wsd"]
DecayShape = Literal["linear", "cosine", "sqrt"]
WdSchedule = Literal["constant", "linear", "lr"]

# Polar Express ships a tuned coefficient table of this length (optim/orthogonalize.py)
POLAR_EXPRESS_MAX_STEPS = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate of the AdamW groups, reached at the end of warmup."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay (usually lr / 10); other groups scale alike."""
    weight_decay: float = 0.1
    """Decoupled weight decay for matrices (embeddings included); none for biases and norms."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.99
    """AdamW second-moment decay (0.99 suits small models and batches; GPT-2 used 0.95)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    name: OptimName = "adamw"
    """`adamw` for every parameter, or `muon`: Muon for hidden matrices, AdamW for the rest."""
    muon_lr: float = 0.005
    """Peak learning rate of the Muon group. Its updates have RMS 0.2 like AdamW's, so it is on
    the same scale as lr (0.005 at width 256 ~ Keller Jordan's 0.02 under his scaling)."""
    muon_momentum: float = 0.95
    """Muon momentum after its warmup."""
    muon_momentum_start: float = 0.85
    """Muon momentum at step 0; rises linearly to muon_momentum."""
    muon_momentum_warmup_steps: int = 300
    """Steps over which Muon momentum rises from muon_momentum_start (0: no warmup)."""
    muon_nesterov: bool = True
    """Nesterov momentum for Muon (orthogonalise g + mu * buffer, not the buffer)."""
    muon_orthogonalizer: Orthogonalizer = "polar_express"
    """How Muon orthogonalises: `polar_express` (per-step tuned quintics, Amsel et al. 2025)
    or `newton_schulz` (one fixed quintic, Jordan et al. 2024)."""
    muon_ns_steps: int = 5
    """Quintic iterations per orthogonalisation (at most 5 for polar_express)."""
    cautious_wd: bool = False
    """Decay only the coordinates where the update and the parameter share a sign
    (Chen et al. 2025). Uses the hybrid optimizer even when name is adamw."""
    schedule: Schedule = "cosine"
    """LR shape after warmup: `constant`, `linear` or `cosine` decay to min_lr, or `wsd`
    (warmup-stable-decay: constant, then decay over the last decay_fraction of the run)."""
    decay_fraction: float = 0.2
    """wsd only: share of max_steps at the end of the run spent decaying to min_lr."""
    decay_shape: DecayShape = "linear"
    """wsd only: decay curve, `linear`, `cosine` or `sqrt` (1 - sqrt(progress))."""
    wd_schedule: WdSchedule = "constant"
    """Weight decay over the run: `constant`, `linear` (to 0 at max_steps) or `lr` (times the
    LR multiplier lr_t / lr)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}; try 1e-3")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        self._check_choices()
        self._check_muon()
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(
                f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}; try 0.2"
            )

    def _check_choices(self) -> None:
        choices = {
            "name": OptimName,
            "muon_orthogonalizer": Orthogonalizer,
            "schedule": Schedule,
            "decay_shape": DecayShape,
            "wd_schedule": WdSchedule,
        }
        for field, kind in choices.items():
            allowed = kind.__args__
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"optim.{field} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, field)!r}"
                )

    def _check_muon(self) -> None:
        if self.muon_lr <= 0:
            raise ValueError(f"optim.muon_lr must be > 0, got {self.muon_lr}; try 0.005")
        for name in ("muon_momentum", "muon_momentum_start"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(
                    f"optim.{name} must be in [0, 1), got {getattr(self, name)}; try 0.95"
                )
        if self.muon_momentum_warmup_steps < 0:
            raise ValueError(
                "optim.muon_momentum_warmup_steps must be >= 0 (0: no warmup), "
                f"got {self.muon_momentum_warmup_steps}"
            )
        top = POLAR_EXPRESS_MAX_STEPS if self.muon_orthogonalizer == "polar_express" else 20
        if not 1 <= self.muon_ns_steps <= top:
            raise ValueError(
                f"optim.muon_ns_steps must be in [1, {top}] for "
                f"muon_orthogonalizer={self.muon_orthogonalizer}, got {self.muon_ns_steps}; try 5"
            )
