"""The parameter count N a scaling law uses, under a named convention.

Kaplan et al. (2020) left embeddings out and found cleaner power laws for small models;
Chinchilla (Hoffmann et al. 2022) counted everything. The choice moves the fitted exponents
(a small model's count is mostly its embedding table), so it is a setting and it is recorded.
Counts come from the model built on the meta device (no memory, instant).
"""

from __future__ import annotations

from gptlab.model.accounting import build_meta, count_params
from gptlab.model.config import ModelConfig
from gptlab.scale.config import PARAM_CONVENTIONS


def scaling_params(cfg: ModelConfig, convention: str = "non_embedding") -> int:
    """N for `cfg` under `convention` (see PARAM_CONVENTIONS)."""
    if convention not in PARAM_CONVENTIONS:
        raise ValueError(
            f"unknown parameter convention {convention!r}; choose {', '.join(PARAM_CONVENTIONS)}"
        )
    model = build_meta(cfg)
    counts = count_params(model)
    if convention == "total":
        return counts.total
    if convention == "non_embedding":
        return counts.non_embedding
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith("blocks."))
