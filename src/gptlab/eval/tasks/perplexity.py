"""`ppl:PATH`: loss, bits per byte and word perplexity of a model on any text (a file, a folder
or a JSONL file with a "text" field), tokenized with the model's own tokenizer.

Each document is read in full windows of the model's context: window k scores the next
`stride` tokens after window k-1's, each from up to seq_len tokens before it
(`scorer.rolling_bounds`). stride = seq_len (the default) is lm-evaluation-harness's
`loglikelihood_rolling`; a smaller stride gives every token more context and costs
seq_len / stride times as much. With BOS (a model trained with it), every token of a
document is predicted; without, the first one has nothing to be predicted from and is left out.

    loss             total NLL / scored tokens (nats per token: depends on the tokenizer)
    bpb              NLL of targets with bytes / (ln 2 * their UTF-8 bytes): comparable
                     across tokenizers (eval/loss.py; special tokens count in neither sum)
    word_perplexity  exp(total NLL / words), words counted as the harness counts them,
                     len(re.split(r"\\s+", document))

Standard errors are bootstrapped over windows; the word count is held fixed for word
perplexity's.
"""

from __future__ import annotations

import math
import re

import numpy as np

from gptlab.data.sources import ReadOptions, iter_documents, resolve_sources
from gptlab.errors import GptlabError
from gptlab.eval.scorer import Window, rolling_bounds, score_windows
from gptlab.eval.stats import bootstrap_stderr
from gptlab.eval.tasks.base import TaskContext, TaskResult, gather_rows, shard, subset

PREFIX = "ppl:"
NLL, TOKENS, NLL_BYTES, BYTES = range(4)  # columns of a window's row


def window_rows(ctx: TaskContext, windows: list[Window], mine: list[int]) -> np.ndarray:
    """(len(windows), 4) rows of every window, this rank scoring `mine`, gathered."""
    token_bytes = ctx.tokenizer.token_bytes()
    lps = score_windows(
        ctx.model, [windows[i] for i in mine], batch_size=ctx.batch_size,
        autocast=ctx.autocast, world_size=ctx.world_size,
    )  # fmt: skip
    rows = np.zeros((len(mine), 4))
    for row, (i, lp) in enumerate(zip(mine, lps, strict=True)):
        w = windows[i]
        nb = token_bytes[list(w.tokens[-w.n_scored :])]
        rows[row] = -lp.sum(), len(lp), -lp[nb > 0].sum(), nb.sum()
    return gather_rows(ctx, mine, rows, len(windows))


def window_metrics(table: np.ndarray, words: int | None = None) -> dict[str, float]:
    """loss, bpb (and word_perplexity given the word count), each with a bootstrap stderr."""
    s = table.sum(axis=0)
    ln2 = math.log(2)
    metrics = {
        "loss": s[NLL] / s[TOKENS],
        "loss_stderr": bootstrap_stderr(table, lambda b: b[:, NLL] / b[:, TOKENS]),
        "bpb": s[NLL_BYTES] / (ln2 * s[BYTES]),
        "bpb_stderr": bootstrap_stderr(table, lambda b: b[:, NLL_BYTES] / (ln2 * b[:, BYTES])),
    }
    if words:
        metrics["word_perplexity"] = math.exp(s[NLL] / words)
        metrics["word_perplexity_stderr"] = bootstrap_stderr(
            table, lambda b: np.exp(b[:, NLL] / words)
        )
    return {k: float(v) for k, v in metrics.items()}


def count_words(document: str) -> int:
    return len(re.split(r"\s+", document))


def run(ctx: TaskContext, name: str) -> TaskResult:
    location = name.removeprefix(PREFIX)
    if not location:
        raise GptlabError("ppl: needs a path to text, e.g. --tasks ppl:wikitext2/valid.txt")
    sources = resolve_sources(location)
    documents = [d for d in iter_documents(sources, ReadOptions()) if d.strip()]
    if not documents:
        raise GptlabError(f"{location} holds no text to measure; give a non-empty file")
    T = ctx.seq_len
    stride = ctx.stride or T
    if not 1 <= stride <= T:
        raise GptlabError(f"--stride {stride} must be between 1 and the context window {T}")
    chosen = subset(len(documents), ctx.limit, ctx.seed)
    windows: list[Window] = []
    words, used = 0, 0
    for i in chosen:
        try:
            ids = ctx.tokenizer.encode_ordinary(documents[i])
        except ValueError:  # characters outside a char vocabulary: skipped
            continue
        if ctx.bos_id is not None:
            ids = [ctx.bos_id, *ids]
        bounds = rolling_bounds(len(ids), T, stride)
        windows += [Window(tuple(ids[lo : end + 1]), n) for lo, end, n in bounds]
        words += count_words(documents[i])
        used += 1
    if not windows:
        raise GptlabError(
            f"the model's tokenizer cannot encode {location} into anything to score (characters "
            "outside a char vocabulary, or one token only); use other text"
        )
    table = window_rows(ctx, windows, shard(ctx, len(windows)))
    return TaskResult(
        name=name,
        metrics=window_metrics(table, words),
        n=used,
        skipped=len(chosen) - used,
        settings={
            "data": [s.location for s in sources],
            "documents": len(documents),
            "windows": len(windows),
            "tokens": int(table[:, TOKENS].sum()),
            "words": words,
            "stride": stride,
        },
    )
