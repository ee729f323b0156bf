"""The statistics against scipy.stats on hand-made numbers, and Holm against hand computation."""

import math

import pytest
from scipy import stats as sps

from gptlab.ablate.stats import compare, holm, summarize, verdict

A = [1.52, 1.49, 1.55]
B = [1.47, 1.46, 1.50, 1.45]


def test_summary_matches_scipy():
    s = summarize(A)
    lo, hi = sps.t.interval(0.95, len(A) - 1, loc=sps.tmean(A), scale=sps.sem(A))
    assert s.n == 3 and s.mean == pytest.approx(sum(A) / 3)
    assert s.std == pytest.approx(sps.tstd(A))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    one = summarize([2.0])
    assert one.mean == 2.0 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_welch_matches_scipy():
    c = compare(B, A)
    ref = sps.ttest_ind(B, A, equal_var=False)
    assert c.diff == pytest.approx(sum(B) / 4 - sum(A) / 3)
    assert c.p_value == pytest.approx(ref.pvalue) and c.df == pytest.approx(ref.df)
    # the interval by hand: diff +- t(0.975, df) * sqrt(s1^2/n1 + s2^2/n2)
    se = math.sqrt(sps.tvar(B) / 4 + sps.tvar(A) / 3)
    half = sps.t.ppf(0.975, ref.df) * se
    assert (c.ci_low, c.ci_high) == (pytest.approx(c.diff - half), pytest.approx(c.diff + half))
    assert math.isnan(compare([1.0], A).p_value)  # one seed: no test
    assert compare([1.0, 1.0], [1.0, 1.0]).p_value == 1.0


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04, 0.30 (m = 4): x4 = .04, x3 = .06, x2 = .08, x1 = .30
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    # monotone: a later raw product below an earlier adjusted value is raised to it
    assert holm([0.01, 0.011, 0.5]) == pytest.approx([0.03, 0.03, 0.5])
    out = holm([0.2, math.nan, 0.9])  # nan is not counted as a test
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.9)
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_verdicts_in_plain_words():
    better = compare(B, A)
    assert verdict(better, 0.003, 3, higher_is_better=False) == "better, p = 0.003"
    assert verdict(better, 0.003, 3, higher_is_better=True) == "worse, p = 0.003"
    assert verdict(better, 0.41, 3, False) == "no detectable difference at n = 3 (p = 0.41)"
    assert verdict(compare([1.0], A), math.nan, 1, False).startswith("too few")
