"""AutoConfig: the one size dial (depth) and the rules that derive everything else from it.

nanochat's recipe (scripts/base_train.py): width = depth x aspect_ratio rounded up to a whole
number of heads; tokens = param_data_ratio x parameters (or from a FLOP budget); the batch
grows as tokens^0.383 from a reference size ("Power Lines", Bergsma et al. 2025); the learning
rate as sqrt(batch) and, for AdamW, as 1/sqrt(width); weight decay keeps B / (lr wd D) constant
(Wang and Aitchison 2024). The base config's batch, learning rate and weight decay are taken as
tuned at `ref_depth`. Docs: docs/scaling.md.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

ParamConvention = Literal["non_embedding", "total", "blocks"]

PARAM_CONVENTIONS: dict[str, str] = {
    "non_embedding": "every parameter except lookup tables (untied token table, learned "
    "positions); the output head counts (nanochat's transformer matrices + lm_head)",
    "total": "every parameter, embeddings included (Chinchilla)",
    "blocks": "the transformer blocks only, no token/position tables and no output head "
    "(Kaplan et al. 2020)",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoConfig:
    """Derive model width, heads, batch, learning rate, weight decay and horizon from depth."""

    depth: int = 0
    """Transformer blocks: the one size dial (0: off, the config is used as given)."""
    aspect_ratio: int = 64
    """Width per block: n_embd = depth x aspect_ratio, rounded up to a multiple of head_dim."""
    head_dim: int = 128
    """Width of one attention head; n_head = n_embd / head_dim."""
    param_data_ratio: float = 12.0
    """Training tokens per parameter (nanochat 12, Chinchilla about 20)."""
    flops: float = 0.0
    """A training FLOP budget instead: tokens = flops / FLOPs per token (0: use the ratio)."""
    vocab: int = 0
    """Vocabulary size to build the model with (0: the base config's model.vocab_size)."""
    params: ParamConvention = "non_embedding"
    """Which parameters param_data_ratio counts (and the scaling fit uses): non_embedding,
    total or blocks."""
    ref_depth: int = 12
    """The depth at which the base config's batch, learning rate and weight decay are tuned."""
    ref_batch_tokens: int = 0
    """Tokens per step at ref_depth (0: the base config's batch x grad accumulation x seq_len)."""
    batch_exponent: float = 0.383
    """The batch grows as tokens^batch_exponent from the reference (Power Lines: 0.383)."""
    batch_round: int = 0
    """Round the batch to a multiple of this many rows (0: to a power of two, as nanochat; a
    multiple changes the batch in smaller jumps between neighbouring sizes)."""
    lr_batch_exponent: float = 0.5
    """Learning rates scale as (batch / reference batch)^lr_batch_exponent (Adam: 0.5)."""
    lr_width_exponent: float = 0.5
    """AdamW's lr scales as (n_embd / reference n_embd)^-lr_width_exponent (nanochat: 0.5)."""

    def __post_init__(self) -> None:
        for name in ("depth", "vocab", "ref_batch_tokens", "batch_round"):
            if getattr(self, name) < 0:
                raise ValueError(f"auto.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("aspect_ratio", "head_dim", "ref_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"auto.{name} must be >= 1, got {getattr(self, name)}")
        if self.param_data_ratio <= 0:
            raise ValueError(
                f"auto.param_data_ratio must be > 0, got {self.param_data_ratio}; try 12"
            )
        if self.flops < 0:
            raise ValueError(f"auto.flops must be >= 0 (0: use the ratio), got {self.flops}")
        if self.params not in PARAM_CONVENTIONS:
            raise ValueError(
                f"auto.params {self.params!r} must be one of {', '.join(PARAM_CONVENTIONS)}"
            )
        for name in ("batch_exponent", "lr_batch_exponent", "lr_width_exponent"):
            if not 0 <= getattr(self, name) <= 2:
                raise ValueError(f"auto.{name} must be in [0, 2], got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return self.depth > 0
