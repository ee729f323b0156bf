"""Validation loss and bits per byte over a fixed list of batches.

Only the next-token cross-entropy counts: MoE balancing terms and multi-token-prediction heads
are training objectives, not part of the loss we compare models by.

Loss per token depends on the tokenizer (a 50k-token BPE packs ~4 bytes into each token, a char
tokenizer one), so losses of runs with different tokenizers do not compare. Bits per byte do:

    bpb = sum_t CE_t / (ln 2 * sum_t bytes(y_t))

the total information, in bits, the model needs for the text, divided by the text's UTF-8
length. Targets that are special tokens (0 bytes, e.g. BOS) count in neither sum, as in
nanochat.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

LOGITS_BUDGET_BYTES = 256 << 20  # fp32 logits held at once; larger batches run in row chunks


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    token_bytes: torch.Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """{"loss": mean next-token CE, "bpb": bits per byte (if token_bytes given)} over `batches`
    (over the targets that are not -1: a chat model's val loss is over the replies only),
    in eval mode (dropout off); restores the mode. token_bytes: (V,) UTF-8 length of each id.

    With `world_size` > 1 (an initialised process group) rank r evaluates batches r, r + W, ...
    and the sums are added across ranks, so every rank returns the result for all batches.
    Every rank runs the same number of forward passes (a rank short of one repeats a batch
    and does not count it), as FSDP's collectives need."""
    was_training = model.training
    model.eval()
    ce_sum = torch.zeros((), device=device, dtype=torch.float64)
    bpb_nats = torch.zeros((), device=device, dtype=torch.float64)
    n_bytes = torch.zeros((), device=device, dtype=torch.float64)
    n_tokens = torch.zeros((), device=device, dtype=torch.float64)
    lengths = token_bytes.to(device) if token_bytes is not None else None
    rounds = -(-len(batches) // world_size)
    for i in range(rank, rounds * world_size, world_size):
        weight = 1.0 if i < len(batches) else 0.0  # 0: a padding pass that only keeps step
        x, y, starts = batches[min(i, len(batches) - 1)]
        x, y = x.to(device), y.to(device)  # (B, T)
        B, T = x.shape
        rows = max(1, LOGITS_BUDGET_BYTES // max(1, T * _vocab(model) * 4))
        for r in range(0, B, rows):
            kw = {"doc_starts": starts[r : r + rows].to(device)} if starts is not None else {}
            with autocast():
                logits = model(x[r : r + rows], **kw)  # (b, T, V) fp32
            targets = y[r : r + rows].flatten()  # (b*T,); -1: not scored (chat finetuning)
            ce = F.cross_entropy(
                logits.float().flatten(0, 1), targets, ignore_index=-1, reduction="none"
            )  # (b*T,), 0 where ignored
            ce_sum += weight * ce.sum(dtype=torch.float64)
            if lengths is not None:
                nb = lengths[targets.clamp(min=0)] * (targets >= 0)  # (b*T,)
                bpb_nats += weight * (ce * (nb > 0)).sum(dtype=torch.float64)
                n_bytes += weight * nb.sum(dtype=torch.float64)
            n_tokens += weight * (targets >= 0).sum(dtype=torch.float64)
    model.train(was_training)
    sums = torch.stack([ce_sum, bpb_nats, n_bytes, n_tokens])
    if world_size > 1:
        dist.all_reduce(sums)
    ce_total, nats, total_bytes, tokens = sums.tolist()
    out = {"loss": ce_total / max(1.0, tokens)}
    if lengths is not None:
        out["bpb"] = nats / (math.log(2) * max(1.0, total_bytes))
    return out


def _vocab(model: nn.Module) -> int:
    module = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    return module.cfg.vocab_size


def mean_loss(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """Mean next-token loss over `batches` (see `evaluate`)."""
    return evaluate(model, batches, device, autocast)["loss"]
