"""What the scorer (eval/scorer.py) scores, built from text and token streams: a Request (a
context and a continuation, as token ids) and a Window (a stretch of a token stream).

Tokenization follows lm-evaluation-harness (`TemplateLM._encode_pair`, 0.4.x): whitespace at
the end of the context moves to the front of the continuation, the context is encoded on its
own, and the continuation is what the whole pair's encoding adds after it. Rolling windows
score every token of a stream but the first exactly once.

These are pure functions of their inputs (no model, no torch), kept apart from the batching
and forwards in scorer.py; scorer.py imports them back, so `from gptlab.eval.scorer import
Request` works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gptlab.tokenizer.base import Tokenizer


@dataclasses.dataclass(frozen=True)
class Request:
    """Token ids of a context (BOS included when the model uses one; never empty) and of the
    continuation to score (never empty)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Window:
    """A stretch of a token stream: `tokens[:-1]` goes in, `tokens[1:]` are the targets, of which
    the last `n_scored` count. `doc_starts` marks document starts in the input (doc_mask models)."""

    tokens: tuple[int, ...]
    n_scored: int
    doc_starts: tuple[bool, ...] | None = None


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str, bos_id: int | None
) -> Request:
    """The request for scoring `continuation` after `context`, tokenized as lm-evaluation-harness
    does (module doc), after `bos_id` when given. With neither a context nor a BOS, the first
    continuation token becomes the context (it cannot be predicted from nothing)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context:
        ctx = tokenizer.encode_ordinary(context)
        cont = tokenizer.encode_ordinary(context + continuation)[len(ctx) :]
    else:
        ctx, cont = [], tokenizer.encode_ordinary(continuation)
    if bos_id is not None:
        ctx = [bos_id, *ctx]
    if not ctx:
        ctx, cont = cont[:1], cont[1:]
    if not cont:
        raise ValueError(f"the continuation {continuation!r} has no tokens to score")
    return Request(tuple(ctx), tuple(cont))


def rolling_windows(ids: Sequence[int], seq_len: int, stride: int) -> list[Window]:
    """Windows that score every token of `ids` but the first exactly once (`rolling_bounds`)."""
    return [
        Window(tuple(ids[lo : end + 1]), n_scored)
        for lo, end, n_scored in rolling_bounds(len(ids), seq_len, stride)
    ]


def rolling_bounds(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(lo, end, n_scored) of the windows over a stream of n tokens: window k reads tokens
    lo..end-1, predicts tokens lo+1..end and scores the last n_scored of them, the (up to)
    `stride` targets after those of window k-1, each seeing up to seq_len tokens of context.
    stride = seq_len gives lm-evaluation-harness's `loglikelihood_rolling` windows (disjoint;
    the last one still reads a full window and scores only what is left)."""
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride {stride} must be in 1..{seq_len} (the context window)")
    bounds = []
    last = n - 1  # index of the last target; the targets are tokens 1..last
    done, end = 0, min(seq_len, last)
    while end > done:
        bounds.append((max(0, end - seq_len), end, end - done))
        done, end = end, min(end + stride, last)
    return bounds
