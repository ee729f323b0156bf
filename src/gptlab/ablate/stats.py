"""The statistics of an ablation: per-variant mean, standard deviation and 95% confidence
interval over seeds; each variant's difference from the baseline with Welch's t-test and its
confidence interval; Holm's correction across the variants; and a verdict in plain words.

Key decisions: the tests come from scipy (`scipy.stats.ttest_ind(equal_var=False)`), not our
own formulas. Welch's test, because variants need not share a variance (Muon's seeds may
spread less than AdamW's). Holm, because comparing k variants with the baseline is k tests, and
at p < 0.05 each, one in twenty null differences would look real; Holm keeps the chance of any
false "better" at 5% and, unlike Bonferroni, loses little power. A verdict never says "same":
with n = 3 seeds a real difference of a few hundredths is usually undetectable, so it says
"no detectable difference at n = 3".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

ALPHA = 0.05
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof 1); nan for n < 2
    ci_low: float  # Student-t 95% interval of the mean; nan for n < 2
    ci_high: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    diff: float  # mean(variant) - mean(baseline)
    ci_low: float  # Welch 95% interval of the difference
    ci_high: float
    p_value: float  # two-sided Welch t-test
    df: float  # Welch-Satterthwaite degrees of freedom


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std and the t-based 95% confidence interval of the mean."""
    from scipy import stats

    x = [float(v) for v in values]
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(x) / n
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def compare(variant: Sequence[float], baseline: Sequence[float]) -> Comparison:
    """Welch's two-sided t-test of variant vs baseline and the 95% interval of the difference.
    Needs two values on each side; identical constant samples give p = 1 (no difference)."""
    from scipy import stats

    a, b = [float(v) for v in variant], [float(v) for v in baseline]
    diff = sum(a) / len(a) - sum(b) / len(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan)
    if max(a) == min(a) and max(b) == min(b):  # zero variance: the t statistic is undefined
        p = 1.0 if diff == 0 else 0.0
        return Comparison(diff, diff, diff, p, math.nan)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return Comparison(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (nan stays nan and is not
    counted): the i-th smallest of m is multiplied by m - i, then made non-decreasing."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def verdict(c: Comparison, p_holm: float, n: int, higher_is_better: bool) -> str:
    """'better, p = 0.003', 'worse, p = 0.02' or 'no detectable difference at n = 3 (p = 0.41)',
    with p Holm-corrected; n is the smaller of the two samples."""
    if math.isnan(p_holm):
        return f"too few finished runs to test (n = {n})"
    if p_holm >= ALPHA:
        return f"no detectable difference at n = {n} (p = {p_holm:.2g})"
    good = c.diff > 0 if higher_is_better else c.diff < 0
    return f"{'better' if good else 'worse'}, p = {p_holm:.2g}"
