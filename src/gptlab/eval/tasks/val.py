"""`val`: loss and bits per byte on the run's own validation split, the numbers training logs
as val_loss and val_bpb, but over the whole split (or `limit` windows of it) instead of
`train.eval_steps` random batches.

The split is read as one stream per shard, in disjoint windows of seq_len + 1 tokens (each
token is predicted once, from the tokens before it in its window; a shard's last window reads a
full window and scores what is left), with document starts for doc_mask models, as training
feeds them. `--limit N` takes N of those windows, seeded. Metrics and standard errors as
tasks/perplexity.py (bootstrap over windows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gptlab.config import from_dict
from gptlab.data.config import DataConfig
from gptlab.data.prepare import prepare
from gptlab.data.registry import Locations
from gptlab.data.shards import TokenShards, load_meta, open_split
from gptlab.errors import GptlabError
from gptlab.eval.scorer import Window, rolling_bounds
from gptlab.eval.tasks.base import TaskContext, TaskResult, shard, subset
from gptlab.eval.tasks.perplexity import TOKENS, window_metrics, window_rows
from gptlab.tokenizer.base import Tokenizer

NAME = "val"


def open_val_split(run_config: dict[str, Any], locations: Locations, tokenizer: Tokenizer):
    """The validation split of the data a run trained on (prepared again if the cache lost
    it), checked to be tokenized by `tokenizer`."""
    try:
        data_cfg = from_dict(DataConfig, run_config.get("data", {}), prefix="data.")
    except ValueError as e:
        raise GptlabError(
            f"the run's data config is invalid ({e}); cannot find its val split"
        ) from None
    data_dir = prepare(data_cfg, locations)
    meta = load_meta(data_dir)
    if meta.get("tokenizer_fingerprint") != tokenizer.fingerprint():
        raise GptlabError(
            f"the prepared data in {data_dir} was tokenized by another tokenizer than the "
            "model's; val needs the run's own data"
        )
    return open_split(data_dir, "val")


def _doc_starts(split: TokenShards, s: int, lo: int, end: int) -> tuple[bool, ...]:
    """Where documents start among the input tokens lo..end-1 of shard s."""
    starts = split.docs[split.docs[:, 0] == s, 1]  # sorted
    a, b = np.searchsorted(starts, [lo, end])
    mask = np.zeros(end - lo, dtype=bool)
    mask[starts[a:b] - lo] = True
    return tuple(bool(x) for x in mask)


def run(ctx: TaskContext) -> TaskResult:
    split = ctx.val_split
    if split is None:
        raise GptlabError(
            "val needs the run's validation split; evaluate a gptlab run or checkpoint (its "
            "config names the data) or leave val out of --tasks"
        )
    T = ctx.seq_len
    bounds = [
        (s, lo, end, n)
        for s, tokens in enumerate(split.shards)
        for lo, end, n in rolling_bounds(len(tokens), T, T)
    ]
    if not bounds:
        raise GptlabError("the validation split is empty; nothing to evaluate for val")
    chosen = subset(len(bounds), ctx.limit, ctx.seed)
    with_starts = bool(ctx.model.cfg.doc_mask)
    windows = []
    for i in chosen:
        s, lo, end, n = bounds[i]
        tokens = tuple(int(t) for t in split.shards[s][lo : end + 1])
        starts = _doc_starts(split, s, lo, end) if with_starts else None
        windows.append(Window(tokens, n, starts))
    table = window_rows(ctx, windows, shard(ctx, len(windows)))
    return TaskResult(
        name=NAME,
        metrics=window_metrics(table),
        n=len(windows),
        settings={
            "windows": len(bounds),
            "tokens": int(table[:, TOKENS].sum()),
            "split_tokens": split.n_tokens,
        },
    )
