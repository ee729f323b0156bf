"""Log-probabilities of continuations given contexts, in batches: the one scorer every task uses.

A request is a context and a continuation, as token ids; its score is the log-probability of
each continuation token given everything before it, and whether each one is the greedy argmax.
Requests and windows, and how text and token streams become them (tokenized as
lm-evaluation-harness does), are in eval/inputs.py. A request longer than the window keeps its
last seq_len + 1 tokens (the context is cropped from the left, as the harness does), and its
score says so.

Three ways to run a batch (`method`), with the same results (tests/eval/test_scorer.py):

- "shared" (continuations' default): choices that share a context run it once. The contexts
  of a batch are prefilled into a KV cache (model/kv_cache.py), each context's cache rows are
  copied to its choices, and the choices run on top of it.
- "rows" (windows' default): one row per request or window, prefilled the same way.
- "forward": one plain `model(idx)` per row, logits at every position. It runs where the
  cached forward cannot: a model sharded by FSDP (its root parameters are only gathered around
  `forward`), and windows with document starts (doc_mask models; `forward_cached` knows no
  documents). Under FSDP every rank must run the same number of forwards, so a rank with fewer
  batches repeats one and ignores it.

The cached ways send only the final hidden states of positions that predict a scored token
through the output head, so the (tokens x vocabulary) logits of context positions are never
made: with a 50k vocabulary they cost more than a small model's blocks (eval/cached.py has the
cached-forward pieces). Choices that begin alike share those positions' head rows.
Log-probabilities are computed from fp32 logits.

Batches are formed after sorting by length, longest first, so rows of a batch have similar
lengths and padding is small; results come back in request order.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gptlab.eval.cached import (
    LOGITS_BUDGET_BYTES,
    Autocast,
    extend,
    head_logprobs,
    logprob_at,
    prefill,
)
from gptlab.eval.inputs import Request, Window, encode_pair, rolling_bounds, rolling_windows

__all__ = [
    "Method",
    "Request",
    "Score",
    "Window",
    "encode_pair",
    "rolling_bounds",
    "rolling_windows",
    "score_continuations",
    "score_windows",
]

Method = Literal["shared", "rows", "forward"]
TAIL_ROWS = 8  # continuations run together on their contexts' caches, at least (see below)


@dataclasses.dataclass(frozen=True)
class Score:
    """The log-probability of each scored continuation token, whether every one of them is the
    model's greedy choice, and whether the request was cropped to fit the window."""

    token_logprobs: tuple[float, ...]
    is_greedy: bool
    cropped: bool

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))


# -- scoring ---------------------------------------------------------------------------------


def score_continuations(
    model: nn.Module,
    requests: Sequence[Request],
    *,
    batch_size: int = 32,
    autocast: Autocast = contextlib.nullcontext,
    method: Method | None = None,
    world_size: int = 1,
) -> list[Score]:
    """Score every request (module doc), in request order, in eval mode (the mode is restored).
    `batch_size` counts continuation rows; `method` None: "shared" where the cached forward
    can run, else "forward". `world_size` > 1: this rank's part of a job whose ranks all call
    this (forward counts are matched for FSDP)."""
    T = model.cfg.seq_len
    cropped = [_crop(r, T) for r in requests]
    method = _method(model, method or "shared")
    with _eval_mode(model, autocast):
        if method == "shared":
            found = _score_shared(model, [r for r, _ in cropped], batch_size, autocast)
        else:
            windows = [Window(r.context + r.continuation, len(r.continuation)) for r, _ in cropped]
            found = _score_windows(model, windows, batch_size, autocast, method, world_size, True)
    return [
        Score(tuple(float(x) for x in lp), bool(greedy), was_cropped)
        for (lp, greedy), (_, was_cropped) in zip(found, cropped, strict=True)
    ]


def score_windows(
    model: nn.Module,
    windows: Sequence[Window],
    *,
    batch_size: int = 32,
    autocast: Autocast = contextlib.nullcontext,
    method: Method | None = None,
    world_size: int = 1,
) -> list[np.ndarray]:
    """Log-probabilities (float64) of each window's scored targets, in window order. `method`
    None: "rows" where the cached forward can run and no window has document starts."""
    default = "forward" if any(w.doc_starts is not None for w in windows) else "rows"
    method = _method(model, method or default)
    if method == "shared":
        raise ValueError("windows have no shared contexts; use method 'rows' or 'forward'")
    if method == "rows" and default == "forward" and model.cfg.doc_mask:
        raise ValueError("windows with document starts need method 'forward'")
    with _eval_mode(model, autocast):
        found = _score_windows(model, windows, batch_size, autocast, method, world_size, False)
    return [lp for lp, _ in found]


def _method(model: nn.Module, wanted: Method) -> Method:
    """`wanted`, or "forward" where the cached forward cannot run: FSDP, or a module that is
    only a function from ids (B, T) to logits (B, T, V), such as the tests' n-gram models."""
    if not hasattr(model, "forward_cached"):
        return "forward"
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6 has no FSDP2
        return wanted
    return "forward" if isinstance(model, FSDPModule) else wanted


def _crop(request: Request, T: int) -> tuple[Request, bool]:
    """Keep the last T + 1 tokens (the model reads T, the last one is only a target)."""
    n = len(request.context) + len(request.continuation)
    if n <= T + 1:
        return request, False
    keep = (request.context + request.continuation)[-(T + 1) :]
    n_cont = min(len(request.continuation), T)  # a continuation longer than the window keeps
    return Request(keep[:-n_cont], keep[-n_cont:]), True  # its last T tokens


@contextlib.contextmanager
def _eval_mode(model: nn.Module, autocast: Autocast) -> Iterator[None]:
    """Eval mode (restored after), no gradients, and one autocast region around the whole
    scoring: autocast keeps its low-precision copies of the weights until its outermost region
    exits, so one region casts them once instead of at every forward (bf16 on a 2-core CPU:
    the casts took a quarter of the time)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            yield
    finally:
        model.train(was_training)


def _batches(order: list[int], sizes: list[int], limit: int) -> Iterator[list[int]]:
    """Consecutive runs of `order` whose sizes add up to at most `limit` (at least one each)."""
    batch: list[int] = []
    total = 0
    for i in order:
        if batch and total + sizes[i] > limit:
            yield batch
            batch, total = [], 0
        batch.append(i)
        total += sizes[i]
    if batch:
        yield batch


def _target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, greedy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, V) logits, (N,) targets -> (N,) float64 log-probabilities, (N,) argmax hits."""
    rows = torch.arange(len(targets), device=targets.device)
    lp = logprob_at(logits.float(), rows, targets)  # (N,)
    return lp, (logits.argmax(dim=-1) == targets) if greedy else None


def _score_shared(
    model: nn.Module, requests: list[Request], batch_size: int, autocast: Autocast
) -> list[tuple[np.ndarray, bool]]:
    """The shared-context path (module doc): groups of requests with one context, batched
    longest context first. Rows of a batch write at their context's length plus the longest
    tail of the batch (padding included), so a batch keeps that within the model's positions."""
    if not requests:  # e.g. a rank with no share of a small subset
        return []
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.context, []).append(i)
    contexts = list(groups)
    tail = [max(len(requests[i].continuation) for i in groups[c]) - 1 for c in contexts]
    order = sorted(range(len(contexts)), key=lambda g: (-len(contexts[g]), -tail[g]))
    out: list[tuple[np.ndarray, bool] | None] = [None] * len(requests)
    T = model.cfg.seq_len
    batch: list[int] = []
    rows = longest_ctx = longest_tail = 0
    for g in [*order, None]:
        if g is not None:
            grown = (max(longest_ctx, len(contexts[g])), max(longest_tail, tail[g]))
            size = len(groups[contexts[g]])
            if not batch or (rows + size <= batch_size and sum(grown) <= T):
                batch.append(g)
                rows, (longest_ctx, longest_tail) = rows + size, grown
                continue
        members = [groups[contexts[b]] for b in batch]
        for i, lp, greedy in _score_shared_batch(
            model, [contexts[b] for b in batch], members, requests, autocast
        ):
            out[i] = (lp, greedy)
        if g is not None:
            batch, rows = [g], len(groups[contexts[g]])
            longest_ctx, longest_tail = len(contexts[g]), tail[g]
    return out  # type: ignore[return-value]  # every request is in one group


def _score_shared_batch(
    model: nn.Module,
    contexts: list[tuple[int, ...]],
    members: list[list[int]],
    requests: list[Request],
    autocast: Autocast,
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """Prefill the contexts once, then run every continuation on a copy of its context's
    cache rows. The continuations go in chunks of rows sorted by length, each padded only to
    its own longest: on HellaSwag with GPT-2 tokens, a rectangle per batch was half padding
    (tail positions 53.5k for 25.0k real ones over 480 examples; chunks of 8 rows: 32.0k)."""
    device = model.wte.weight.device
    G, lengths = len(contexts), [len(c) for c in contexts]
    rows = [i for m in members for i in m]  # request of each continuation row
    group_of = [g for g, m in enumerate(members) for _ in m]  # (R,) context of each row
    tail_of = [requests[i].continuation[:-1] for i in rows]  # what runs on top of the context
    chunk = max(TAIL_ROWS, len(rows) // 4)
    with autocast():
        hidden, cache = prefill(model, contexts, max(lengths))  # (G, Tc, C)
        last = hidden[torch.arange(G, device=device), torch.tensor(lengths, device=device) - 1]
        tails: dict[int, torch.Tensor] = {}  # row -> hidden states of its tail (L - 1, C)
        order = sorted(range(len(rows)), key=lambda r: -len(tail_of[r]))
        for a in range(0, len(order), chunk):
            part = [r for r in order[a : a + chunk] if tail_of[r]]
            if part:
                h = extend(model, cache, lengths, [group_of[r] for r in part],
                            [tail_of[r] for r in part])  # fmt: skip
                for k, r in enumerate(part):
                    tails[r] = h[k, : len(tail_of[r])]
    # token j of a continuation is predicted at its context's last position (j = 0) or at
    # position j - 1 of its tail; choices that begin alike predict their next token from the
    # same prefix, so each distinct (context, prefix) goes through the head once
    flat = torch.cat([last, *(tails[r] for r in sorted(tails))])  # (G + tail positions, C)
    base, at = {}, G
    for r in sorted(tails):
        base[r], at = at, at + len(tails[r])
    where: dict[tuple, int] = {}  # (context, continuation prefix) -> its row of `flat`
    keys = []
    for r, i in enumerate(rows):
        cont = requests[i].continuation
        for j in range(len(cont)):
            key = (group_of[r], cont[:j])
            where.setdefault(key, group_of[r] if j == 0 else base[r] + j - 1)
            keys.append(key)
    unique = sorted(set(where.values()))
    slot = {row: u for u, row in enumerate(unique)}
    picks = [slot[where[k]] for k in keys]  # (N,) row among the unique ones, per target
    targets = [t for i in rows for t in requests[i].continuation]
    order = sorted(range(len(picks)), key=picks.__getitem__)  # rows ascending, for the chunks
    h = flat[torch.tensor(unique, device=device)]  # (U, C)
    lp_sorted, hit_sorted = head_logprobs(
        model, h, [picks[k] for k in order], [targets[k] for k in order], autocast, greedy=True
    )
    lp, hit = np.empty_like(lp_sorted), np.empty_like(hit_sorted)
    lp[order], hit[order] = lp_sorted, hit_sorted
    at = 0
    for i in rows:
        n = len(requests[i].continuation)
        yield i, lp[at : at + n], bool(hit[at : at + n].all())
        at += n


def _score_windows(
    model: nn.Module,
    windows: Sequence[Window],
    batch_size: int,
    autocast: Autocast,
    method: Method,
    world_size: int,
    greedy: bool,
) -> list[tuple[np.ndarray, bool]]:
    """The "rows" and "forward" paths: batches of windows, sorted by length."""
    cfg, device = model.cfg, model.wte.weight.device
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].tokens))
    batches: list[list[int]] = []
    for batch in _batches(order, [1] * len(windows), batch_size):
        T = len(windows[batch[0]].tokens) - 1  # the longest in the batch: sorted
        rows = max(1, LOGITS_BUDGET_BYTES // (T * cfg.vocab_size * 4 * 2))
        if method == "rows":  # logits only at scored positions, in chunks: no limit here
            rows = len(batch)
        batches += [batch[a : a + rows] for a in range(0, len(batch), rows)]
    n_forwards = len(batches)
    if world_size > 1 and method == "forward":  # FSDP: as many forwards as the busiest rank
        count = torch.tensor([n_forwards], device=device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        n_forwards = int(count.item())
    run = _rows_batch if method == "rows" else _forward_batch
    out: list[tuple[np.ndarray, bool] | None] = [None] * len(windows)
    for k in range(n_forwards):
        if k >= len(batches):  # a padding forward that only keeps the ranks in step
            run(model, [Window((0, 0), 1)], autocast, greedy)
            continue
        batch = batches[k]
        lp, hit = run(model, [windows[i] for i in batch], autocast, greedy)
        splits = np.cumsum([windows[i].n_scored for i in batch])[:-1]
        hits = np.split(hit, splits) if hit is not None else [np.ones(1)] * len(batch)
        for i, row_lp, row_hit in zip(batch, np.split(lp, splits), hits, strict=True):
            out[i] = (row_lp, bool(row_hit.all()))
    return out  # type: ignore[return-value]  # every window is in one batch


def _scored(windows: list[Window], T: int) -> tuple[list[int], list[int]]:
    """Flat indices into (B, T) of the positions that predict each window's scored targets,
    and those targets."""
    picks, targets = [], []
    for b, w in enumerate(windows):
        n_in = len(w.tokens) - 1
        picks += range(b * T + n_in - w.n_scored, b * T + n_in)
        targets += w.tokens[-w.n_scored :]
    return picks, targets


def _rows_batch(
    model: nn.Module, windows: list[Window], autocast: Autocast, greedy: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """One cached prefill of the windows' inputs; the head only where a target is scored."""
    device = model.wte.weight.device
    T = max(len(w.tokens) for w in windows) - 1
    with autocast():
        hidden, _ = prefill(model, [w.tokens[:-1] for w in windows], T)  # (B, T, C)
    picks, targets = _scored(windows, T)
    h = hidden.reshape(-1, hidden.size(-1))[torch.tensor(picks, device=device)]  # (N, C)
    return head_logprobs(model, h, list(range(len(picks))), targets, autocast, greedy)


def _forward_batch(
    model: nn.Module, windows: list[Window], autocast: Autocast, greedy: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """One plain forward over the right-padded windows (document starts for doc_mask)."""
    device = model.wte.weight.device
    T = max(len(w.tokens) for w in windows) - 1
    ids = torch.tensor([w.tokens[:-1] + (0,) * (T + 1 - len(w.tokens)) for w in windows])
    kw = {}
    if model.cfg.doc_mask and any(w.doc_starts is not None for w in windows):
        starts = [
            (w.doc_starts or (True,) + (False,) * (len(w.tokens) - 2))
            + (False,) * (T + 1 - len(w.tokens))
            for w in windows
        ]
        kw["doc_starts"] = torch.tensor(starts, device=device)  # (B, T)
    with autocast():
        logits = model(ids.to(device), **kw)  # (B, T, V) fp32
    picks, targets = _scored(windows, T)
    picked = logits.reshape(-1, logits.size(-1))[torch.tensor(picks, device=device)]  # (N, V)
    lp, hit = _target_logprobs(picked, torch.tensor(targets, device=device), greedy)
    return lp.cpu().numpy(), hit.cpu().numpy() if hit is not None else None
