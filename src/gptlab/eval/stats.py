"""Standard errors of benchmark metrics: closed form for means, bootstrap for everything else.

An accuracy is the mean of n 0/1 outcomes; its standard error is the sample standard deviation
over sqrt(n), i.e. sqrt(p (1 - p) / (n - 1)), the formula lm-evaluation-harness reports
(`mean_stderr`), so our numbers and the harness's compare. Metrics with no closed form (a
perplexity, a ratio of sums such as bits per byte) are resampled: the examples (or windows) are
drawn with replacement `iters` times from a seeded generator and the metric recomputed; the
standard deviation of those values is the standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

BOOTSTRAP_ITERS = 1000
BOOTSTRAP_SEED = 1234


def mean_stderr(values: np.ndarray) -> float:
    """Standard error of the mean of `values` (n - 1 in the variance); nan for n < 2."""
    n = len(values)
    if n < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(n))


def bootstrap_stderr(
    columns: np.ndarray,
    metric: Callable[[np.ndarray], np.ndarray],
    iters: int = BOOTSTRAP_ITERS,
    seed: int = BOOTSTRAP_SEED,
) -> float:
    """Bootstrap standard error of `metric` over the rows of `columns` (n, k).

    `metric` takes column sums of resampled rows, shape (iters, k), and returns (iters,) values;
    so any metric that is a function of sums (a mean, a ratio of sums, exp of a mean) works.
    nan for fewer than 2 rows."""
    n = len(columns)
    if n < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    values = []
    chunk = max(1, (1 << 22) // n)  # resamples drawn at once: about 4M indices
    for a in range(0, iters, chunk):
        idx = rng.integers(0, n, size=(min(chunk, iters - a), n))  # (b, n)
        sums = columns[idx].sum(axis=1)  # (b, k)
        values.append(metric(sums))
    return float(np.std(np.concatenate(values), ddof=1))


def centered(acc: float, chance: float) -> float:
    """Accuracy rescaled so chance is 0 and perfect is 1: (acc - chance) / (1 - chance)."""
    return (acc - chance) / (1.0 - chance)
