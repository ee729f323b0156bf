"""The model's cached forward as a scoring tool: prefill rows into a KV cache, run
continuations on copies of cached rows, and send chosen final hidden states through the head.

`forward_cached` (model/gpt.py) returns only each row's last logits, so the final hidden states
of every position are taken from a forward hook on the last block; the scorer then applies the
final norm and the output head (`model.logits`) itself, only where a target is scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.kv_cache import KVCache

Autocast = Callable[[], contextlib.AbstractContextManager]
LOGITS_BUDGET_BYTES = 256 << 20  # fp32 logits (and their log-softmax) held at once


def logprob_at(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[rows[k]])[targets[k]], float64 (N,). The model's logits are a slice
    of a vocabulary padded to a multiple of 64, so their rows are not contiguous; on a CPU
    log_softmax of such a slice took 3x its contiguous time (0.65 s vs 0.20 s for 2,703 x
    50,257), and logit - logsumexp of the slice itself was the fastest (0.30 s)."""
    if logits.is_contiguous():
        return F.log_softmax(logits, dim=-1)[rows, targets].double()
    return (logits[rows, targets] - torch.logsumexp(logits, dim=-1)[rows]).double()


def head_logprobs(
    model: nn.Module,
    hidden: torch.Tensor,
    rows: list[int],
    targets: list[int],
    autocast: Autocast,
    greedy: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Log-probabilities of `targets` (and argmax hits), target k predicted from the final
    hidden state hidden[rows[k]] (hidden: (U, C), rows ascending; several targets may share a
    row). Through the final norm and the output head, in chunks of rows of bounded logits."""
    device = hidden.device
    chunk = max(1, LOGITS_BUDGET_BYTES // (model.cfg.vocab_size * 4 * 2))
    starts = np.searchsorted(rows, np.arange(0, hidden.size(0) + chunk, chunk)).tolist()
    row_t, target_t = torch.tensor(rows, device=device), torch.tensor(targets, device=device)
    lps, hits = [], []
    for k, a in enumerate(range(0, hidden.size(0), chunk)):
        lo, hi = starts[k], starts[k + 1]
        with autocast():
            logits = model.logits(model.ln_f(hidden[a : a + chunk]))  # (n, V) fp32
        at, tg = row_t[lo:hi] - a, target_t[lo:hi]
        lps.append(logprob_at(logits.float(), at, tg))
        if greedy:
            hits.append(logits.argmax(dim=-1)[at] == tg)
    lp = torch.cat(lps).cpu().numpy()
    return lp, torch.cat(hits).cpu().numpy() if greedy else None


@contextlib.contextmanager
def final_hidden(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the last block's output (B, T, C) of each forward inside the block."""
    seen: list[torch.Tensor] = []
    handle = model.blocks[-1].register_forward_hook(lambda mod, args, out: seen.append(out[0]))
    try:
        yield seen
    finally:
        handle.remove()


def prefill(
    model: nn.Module, rows: list[tuple[int, ...]], capacity: int
) -> tuple[torch.Tensor, KVCache]:
    """Run right-padded `rows` through the cached forward into a fresh cache of `capacity`
    slots; (the last block's output (B, T, C), the cache). Call under autocast."""
    cfg, device = model.cfg, model.wte.weight.device
    lengths = [len(r) for r in rows]
    T = max(lengths)
    dtype = model.wte.weight.dtype  # keys and values come out in autocast's dtype, if on
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    cache = KVCache(
        cfg.n_layer, len(rows), cfg.kv_heads, capacity, cfg.head_dim, device=device, dtype=dtype
    )
    ids = torch.tensor([r + (0,) * (T - len(r)) for r in rows], device=device)  # (B, T)
    step = cache.begin(slice(0, len(rows)), T, lengths)
    with final_hidden(model) as hidden:
        model.forward_cached(ids, step)
    step.commit()
    return hidden[0], cache


def extend(
    model: nn.Module,
    cache: KVCache,
    lengths: list[int],
    src: list[int],
    tails: list[tuple[int, ...]],
) -> torch.Tensor:
    """Copy cache rows `src` (contexts of `lengths`) into a fresh cache and run `tails` on
    top, right-padded; the last block's output (len(src), longest tail, C)."""
    cfg, device = model.cfg, model.wte.weight.device
    n, Tc, Te = len(src), max(lengths), max(len(t) for t in tails)
    rows_cache = KVCache(
        cfg.n_layer, n, cfg.kv_heads, Tc + Te, cfg.head_dim, device=device, dtype=cache.k[0].dtype
    )
    index = torch.tensor(src, device=device)  # (n,)
    for big, small in ((rows_cache.k, cache.k), (rows_cache.v, cache.v)):
        for layer in range(cfg.n_layer):
            big[layer][:, :, :Tc].copy_(small[layer].index_select(0, index))
    rows_cache.lengths = [lengths[g] for g in src]
    ids = torch.tensor([t + (0,) * (Te - len(t)) for t in tails], device=device)  # (n, Te)
    step = rows_cache.begin(slice(0, n), Te, [len(t) for t in tails])
    with final_hidden(model) as hidden:
        model.forward_cached(ids, step)
    return hidden[0]
