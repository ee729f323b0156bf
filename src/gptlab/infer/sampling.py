"""Choosing the next token from logits, for a batch of rows with their own settings.

Each row b has a SamplingParams; its logits go through these steps, in order:

    penalties    repetition r (CTRL, Keskar et al. 2019): a logit l of a token already in the
                 prompt or the output becomes l / r if l > 0, else l * r;
                 frequency f and presence p (OpenAI): l -= f * count + p * [count > 0], counting
                 the tokens generated so far
    temperature  l / tau: tau < 1 sharpens, tau > 1 flattens; tau = 0 is greedy (argmax)
    top-k        keep the k largest logits
    top-p        nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely
                 tokens whose probabilities add up to at least p
    min-p        keep tokens whose probability is at least min_p times the top token's
    draw         renormalise, then inverse-CDF sampling with one uniform number u from the row's
                 own generator: the first token whose cumulative probability exceeds u

Drawing through the row's own generator makes a seeded request give the same tokens whatever
else is in the batch. `sampling_probs` is the distribution after all filters; tests check its
masks on hand-made distributions.
"""

from __future__ import annotations

import torch

from gptlab.infer.config import SamplingParams


def apply_penalties(
    logits: torch.Tensor,
    seen: torch.Tensor,
    counts: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """logits (B, V); seen (B, V) bool (in prompt or output); counts (B, V) of generated tokens;
    per-row penalties (B,) -> penalised logits (B, V)."""
    r = repetition[:, None]  # (B, 1)
    penalised = torch.where(logits > 0, logits / r, logits * r)
    logits = torch.where(seen, penalised, logits)
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).float()


def sampling_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered distribution of each row, sorted: (probs (B, V) in descending order, and the
    token id at each sorted place (B, V)). Rows with temperature 0 are not special here."""
    V = logits.size(-1)
    tau = torch.where(temperature > 0, temperature, torch.ones_like(temperature))  # (B,)
    scaled, order = (logits.float() / tau[:, None]).sort(dim=-1, descending=True)  # (B, V) x 2
    rank = torch.arange(V, device=logits.device)  # (V,)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, V))  # (B,)
    scaled = scaled.masked_fill(rank >= k[:, None], float("-inf"))
    probs = scaled.softmax(dim=-1)  # (B, V)
    before = probs.cumsum(dim=-1) - probs  # probability mass of the more likely tokens
    drop = before >= top_p[:, None]  # the set before already reaches p (the top token stays)
    drop |= probs < min_p[:, None] * probs[:, :1]
    probs = probs.masked_fill(drop, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True), order


def vocab_order(probs: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Sorted probabilities back in token-id order: (B, V)."""
    return torch.zeros_like(probs).scatter_(-1, order, probs)


def draw(probs: torch.Tensor, order: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample of each row: probs (B, V), the token id at each place (B, V) or None
    when probs are in id order, uniforms (B,) in [0, 1) -> token ids (B,)."""
    cdf = probs.cumsum(dim=-1)  # (B, V)
    place = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)  # (B, 1)
    place = place.clamp(max=probs.size(-1) - 1)
    return (place if order is None else order.gather(-1, place))[:, 0]  # (B,)


class Sampler:
    """Next tokens for a batch of rows, each with its SamplingParams and generator.

    Built once for a fixed set of rows (the per-row settings become tensors once); `__call__`
    takes that batch's logits. Work that no row needs (penalties, filters) is skipped.
    """

    def __init__(
        self,
        params: list[SamplingParams],
        generators: list[torch.Generator],
        device,
        vocab_size: int,
    ) -> None:
        self.params, self.generators = params, generators

        def col(name: str, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=device)

        self.greedy = [p.temperature == 0 for p in params]
        self.all_greedy = all(self.greedy)
        self.penalised = any(p.penalised for p in params)
        # top-k, top-p and min-p need the sorted distribution; without them, skip the sort
        self.filtered = any(0 < p.top_k < vocab_size or p.top_p < 1 or p.min_p > 0 for p in params)
        self.temperature = col("temperature")
        self.tau = torch.where(self.temperature > 0, self.temperature, 1.0)[:, None]  # (B, 1)
        self.top_k = col("top_k", torch.long)
        self.top_p, self.min_p = col("top_p"), col("min_p")
        self.repetition = col("repetition_penalty")
        self.frequency = col("frequency_penalty")
        self.presence = col("presence_penalty")

    def __call__(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
    ) -> list[int]:
        """logits (B, V) fp32 (and, when any row has penalties, seen/counts (B, V)) -> ids."""
        if self.penalised:
            logits = apply_penalties(
                logits, seen, counts, self.repetition, self.frequency, self.presence
            )
        greedy = logits.argmax(dim=-1).tolist() if any(self.greedy) else None
        if self.all_greedy:
            return greedy
        if self.filtered:
            probs, order = sampling_probs(
                logits, self.temperature, self.top_k, self.top_p, self.min_p
            )  # (B, V) x 2, sorted
        else:
            probs, order = (logits.float() / self.tau).softmax(dim=-1), None  # (B, V)
        gens = self.generators
        if len(gens) == 1:  # the same number torch.rand((), generator=g) gives, in one call
            u = torch.rand(1, generator=gens[0])  # (1,)
        else:
            u = torch.stack([torch.rand((), generator=g) for g in gens])  # (B,)
        ids = draw(probs, order, u.to(probs.device)).tolist()
        if greedy is None:
            return ids
        pairs = zip(greedy, ids, self.greedy, strict=True)
        return [g if is_greedy else i for g, i, is_greedy in pairs]
