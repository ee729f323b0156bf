"""What every task receives (TaskContext) and returns (TaskResult), and the steps they share:
the seeded subset of `--limit`, splitting examples across ranks, and gathering results back.

Each task turns its examples into one row of numbers per example (or per window); rank r scores
the examples r, r + W, ... of the subset, and the rows are summed across ranks into one table
that every rank then reduces to the same metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gptlab.data.shards import TokenShards
from gptlab.eval.tasks.files import DataSources
from gptlab.tokenizer.base import Tokenizer

SUBSET_SEED = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskContext:
    """The model and every setting a task needs (api.run_tasks documents each one)."""

    model: nn.Module
    tokenizer: Tokenizer
    add_bos: bool
    limit: int | None = None
    seed: int = SUBSET_SEED
    num_fewshot: int = 0
    batch_size: int = 32
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    rank: int = 0
    world_size: int = 1
    data: DataSources = DataSources()
    stride: int | None = None
    val_split: TokenShards | None = None

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_id if self.add_bos else None

    @property
    def seq_len(self) -> int:
        return self.model.cfg.seq_len


@dataclasses.dataclass
class TaskResult:
    """One task's metrics (each with its `_stderr`), sample size, chance level and notes."""

    name: str
    metrics: dict[str, float]
    n: int
    chance: float | None = None  # the accuracy of guessing (None: no such metric)
    cropped: int = 0  # examples cut from the left to fit the context window
    skipped: int = 0  # examples the tokenizer cannot encode (characters outside its vocabulary)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # data file, counts, ...
    predictions: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # per example


def subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the examples to evaluate: all of them, or `limit` drawn without replacement
    by a generator seeded with `seed` (the same subset every time), in file order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def gather_rows(ctx: TaskContext, mine: list[int], rows: np.ndarray, n: int) -> np.ndarray:
    """(n, k) float64: row i is what the rank that scored item i (of `mine` on this rank)
    computed; every rank gets the whole table."""
    k = rows.shape[1]
    table = np.zeros((n, k), dtype=np.float64)
    table[mine] = rows
    if ctx.world_size > 1:
        device = ctx.model.wte.weight.device
        t = torch.from_numpy(table).to(device)
        dist.all_reduce(t)
        table = t.cpu().numpy()
    return table


def shard(ctx: TaskContext, n: int) -> list[int]:
    """This rank's items among n: r, r + W, ..."""
    return list(range(ctx.rank, n, ctx.world_size))
