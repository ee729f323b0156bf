"""Autoregressive generation: run the model on the context, sample a token, append, repeat.

This version recomputes the whole (cropped) context for each new token; it is simple and
correct for any architecture, and a KV cache can later replace the inner call without changing
this interface.
"""

from __future__ import annotations

import torch
from torch import nn

from gptlab.infer.sampling import sample_next_token


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    seq_len: int,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend token ids (B, T0) by max_new_tokens; returns (B, T0 + max_new_tokens).

    The model sees at most the last `seq_len` tokens, so generation can run past its context.
    """
    for _ in range(max_new_tokens):
        context = idx[:, -seq_len:]  # (B, <=seq_len)
        logits = model(context)[:, -1, :]  # (B, V)
        next_id = sample_next_token(logits, temperature, top_k, generator)  # (B, 1)
        idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
    return idx
