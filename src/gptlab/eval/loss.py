"""Mean cross-entropy of a model over a fixed list of batches (the val loss nanoGPT reports).

Only the next-token cross-entropy counts: MoE balancing terms and multi-token-prediction heads
are training objectives, not part of the loss we compare models by.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """Mean next-token loss over `batches` in eval mode (dropout off); restores the mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for x, y in batches:
        with autocast():
            _, stats = model(x.to(device), y.to(device))
            total += stats["ce"].float()
    model.train(was_training)
    return total.item() / len(batches)
