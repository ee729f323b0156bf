"""Inference settings: SamplingParams (how one request picks tokens) and SampleConfig (what
`gptlab sample` does, stored in a run's config as its `sample` section)."""

from __future__ import annotations

import dataclasses

# A seed is an int64 as in OpenAI's API, and not negative: it is mixed by numpy's SeedSequence
# (infer/engine.py), which refuses negative numbers.
MAX_SEED = 2**63


class InvalidSampling(ValueError):
    """A SamplingParams field out of range. `field` names it, so that the server can point at
    the request field (OpenAI's `param`) without parsing the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check_sampling(p: SamplingParams) -> None:
    """Every check of every sampling field: the CLI, the chat session and the server all build
    a SamplingParams, so a bad value is refused here, before any engine state is touched."""

    def require(ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise InvalidSampling(field, f"{field} must be {rule}, got {getattr(p, field)!r}")

    require(p.max_new_tokens >= 0, "max_new_tokens", ">= 0")
    require(p.temperature >= 0, "temperature", ">= 0 (0 is greedy)")
    require(p.top_k >= 0, "top_k", ">= 0 (0 disables it)")
    require(0 < p.top_p <= 1, "top_p", "in (0, 1] (1 disables it)")
    require(0 <= p.min_p < 1, "min_p", "in [0, 1) (0 disables it)")
    require(p.repetition_penalty > 0, "repetition_penalty", "> 0 (1 disables it)")
    for name in ("frequency_penalty", "presence_penalty"):
        require(-2 <= getattr(p, name) <= 2, name, "in [-2, 2] (0 disables it)")
    if any(not s for s in p.stop):
        raise InvalidSampling("stop", "stop strings must not be empty")
    if p.seed is not None:
        is_int = isinstance(p.seed, int) and not isinstance(p.seed, bool)
        require(is_int and 0 <= p.seed < MAX_SEED, "seed", "an integer in [0, 2**63)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request picks its tokens; infer/sampling.py explains each step."""

    max_new_tokens: int = 256
    """Most tokens to generate."""
    temperature: float = 1.0
    """Softmax temperature: <1 sharper, >1 more random, 0 is greedy decoding."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 disables it)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens up to this total probability (1 = off)."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely one (0 = off)."""
    repetition_penalty: float = 1.0
    """Divide positive (multiply negative) logits of tokens already seen by this (1 = off)."""
    frequency_penalty: float = 0.0
    """Subtract this times the token's count in the output so far (OpenAI; 0 = off)."""
    presence_penalty: float = 0.0
    """Subtract this from every token already in the output (OpenAI; 0 = off)."""
    stop: tuple[str, ...] = ()
    """Stop before any of these strings; the string itself is not returned."""
    stop_token_ids: tuple[int, ...] = ()
    """Stop after any of these token ids (not returned either), besides the tokenizer's EOS."""
    seed: int | None = None
    """Seed of this request's own generator, in [0, 2**63); None = a fresh random one."""

    def __post_init__(self) -> None:
        _check_sampling(self)

    @property
    def penalised(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleConfig(SamplingParams):
    """What `gptlab sample` generates: a prompt, how many samples, and SamplingParams' fields
    (with defaults for printing Shakespeare: nanoGPT's 500 tokens, temperature 0.8, top-k 200)."""

    prompt: str = "\n"
    """Text to continue; '@path' reads it from a file."""
    max_new_tokens: int = 500
    """Number of tokens to generate after the prompt (may run past the model's context: the
    oldest tokens are then dropped, see docs/inference.md)."""
    temperature: float = 0.8
    """Softmax temperature: <1 sharper, >1 more random, 0 is greedy decoding."""
    top_k: int = 200
    """Sample only among the k most likely tokens (0 disables top-k)."""
    seed: int = 1337
    """Seed of the sampling generator: the same seed gives the same text."""
    num_samples: int = 1
    """How many independent samples to draw (they share one pass over the prompt)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

    def params(self) -> SamplingParams:
        """The sampling part of this config, for the engine."""
        fields = {f.name for f in dataclasses.fields(SamplingParams)}
        return SamplingParams(**{k: v for k, v in dataclasses.asdict(self).items() if k in fields})
