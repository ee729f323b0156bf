"""SampleConfig: how `gptlab sample` generates text."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleConfig:
    prompt: str = "\n"
    """Text to continue; '@path' reads it from a file."""
    max_new_tokens: int = 500
    """Number of tokens to generate after the prompt."""
    temperature: float = 0.8
    """Softmax temperature: <1 sharper, >1 more random, 0 is greedy decoding."""
    top_k: int = 200
    """Sample only among the k most likely tokens (0 disables top-k)."""
    seed: int = 1337
    """Seed of the sampling generator: the same seed gives the same text."""
    num_samples: int = 1
    """How many independent samples to draw."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
