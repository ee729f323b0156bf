"""Sampling on hand-made logits: each filter's mask, the inverse-CDF draw, penalties, Sampler."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.cli.main import main
from gptlab.infer.config import InvalidSampling, SampleConfig, SamplingParams
from gptlab.infer.sampling import Sampler, apply_penalties, draw, sampling_probs, vocab_order

PROBS = [0.5, 0.3, 0.15, 0.05]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny ops; conftest restores the thread count


def logits_of(probs, perm=None) -> torch.Tensor:
    """(1, V) logits whose softmax is `probs`, optionally with ids permuted (id perm[i] gets
    probs[i])."""
    logits = torch.tensor(probs, dtype=torch.float64).log().float()
    if perm is not None:
        out = torch.empty_like(logits)
        out[torch.tensor(perm)] = logits
        logits = out
    return logits[None]


def filtered(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """sampling_probs for one setting applied to every row: (sorted probs, order)."""
    B = logits.size(0)
    return sampling_probs(
        logits,
        torch.full((B,), float(temperature)),
        torch.full((B,), int(top_k), dtype=torch.long),
        torch.full((B,), float(top_p)),
        torch.full((B,), float(min_p)),
    )


def kept(probs: torch.Tensor) -> int:
    return int((probs[0] > 0).sum())


# --- filters


def test_no_filter_is_softmax_sorted():
    logits = torch.randn(3, 11)
    probs, order = filtered(logits)
    want, want_order = logits.softmax(-1).sort(dim=-1, descending=True)
    torch.testing.assert_close(probs, want)
    assert torch.equal(order, want_order)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 9])
def test_top_k_keeps_exactly_k(k):
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1, 1.5, -0.2, 0.7, 1.1, -3.0]])
    probs, order = filtered(logits, top_k=k)
    assert kept(probs) == k
    top = logits[0].topk(k)
    assert set(order[0, :k].tolist()) == set(top.indices.tolist())
    torch.testing.assert_close(probs[0, :k], top.values.softmax(-1))


@pytest.mark.parametrize(
    ("top_p", "n"),
    [(1e-6, 1), (0.3, 1), (0.49, 1), (0.51, 2), (0.7, 2), (0.79, 2), (0.81, 3), (0.94, 3)]
    + [(0.96, 4), (1.0, 4)],
)
def test_top_p_keeps_smallest_prefix_reaching_p(top_p, n):
    """Mass of the more likely tokens before each: 0, 0.5, 0.8, 0.95; drop once it is >= p.

    p exactly 0.5/0.8/0.95 would hinge on fp32 rounding of those sums; the exact boundary is
    tested on a uniform distribution below."""
    probs, _ = filtered(logits_of(PROBS), top_p=top_p)
    assert kept(probs) == n
    want = torch.tensor(PROBS[:n]) / sum(PROBS[:n])
    torch.testing.assert_close(probs[0, :n], want)
    assert probs[0, n:].sum() == 0


@pytest.mark.parametrize(("top_p", "n"), [(0.25, 1), (0.5, 2), (0.75, 3), (0.7500001, 4)])
def test_top_p_boundary_exact(top_p, n):
    """Uniform over 4 (exact in floating point): 2 tokens reach p = 0.5 exactly, so 2 stay."""
    probs, _ = filtered(torch.zeros(1, 4), top_p=top_p)
    assert kept(probs) == n


def test_top_token_always_kept():
    logits = torch.tensor([[5.0, 4.9, 4.8, -1.0]])
    for kwargs in ({"top_p": 1e-9}, {"min_p": 0.999}, {"top_k": 1, "top_p": 1e-9}):
        probs, order = filtered(logits, **kwargs)
        assert kept(probs) == 1 and order[0, 0] == 0 and probs[0, 0] == 1.0


@pytest.mark.parametrize(("min_p", "n"), [(0.05, 4), (0.11, 3), (0.25, 3), (0.35, 2), (0.7, 1)])
def test_min_p_keeps_tokens_above_fraction_of_max(min_p, n):
    """Ratios to the top token: 1, 0.6, 0.3, 0.1."""
    probs, _ = filtered(logits_of(PROBS), min_p=min_p)
    assert kept(probs) == n
    torch.testing.assert_close(probs[0, :n], torch.tensor(PROBS[:n]) / sum(PROBS[:n]))


def test_min_p_boundary_exact():
    """The second token is exactly half as likely as the first (exp(-ln 2) = 0.5 in fp32, and
    halving is exact): min_p = 0.5 keeps it ("at least"), anything above drops it."""
    logits = torch.tensor([[math.log(2), 0.0, -5.0]])
    assert kept(filtered(logits, min_p=0.5)[0]) == 2
    assert kept(filtered(logits, min_p=0.5000001)[0]) == 1


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    for tau in (0.5, 1.0, 3.0):
        probs, order = filtered(logits, temperature=tau)
        want = vocab_order(probs, order)
        torch.testing.assert_close(want, (logits / tau).softmax(-1))
    # temperature 0 is not special here: treated as 1
    probs, order = filtered(logits, temperature=0.0)
    torch.testing.assert_close(vocab_order(probs, order), logits.softmax(-1))


def test_filters_compose():
    logits = logits_of(PROBS)
    # top-p alone at 0.83 keeps 3 (mass before the 3rd is 0.8) ...
    assert kept(filtered(logits, top_p=0.83)[0]) == 3
    # ... but after top-k 3 renormalises, the mass before the 3rd is 0.8/0.95 = 0.842 >= 0.83
    probs, _ = filtered(logits, top_k=3, top_p=0.83)
    assert kept(probs) == 2
    torch.testing.assert_close(probs[0, :2], torch.tensor([0.5, 0.3]) / 0.8)
    # top-k 3 and min-p 0.4 (0.15 / 0.5 = 0.3 < 0.4): 2 left
    assert kept(filtered(logits, top_k=3, min_p=0.4)[0]) == 2
    # top-p 0.96 keeps 4, min-p 0.2 drops the 0.05 one (ratio 0.1)
    assert kept(filtered(logits, top_p=0.96, min_p=0.2)[0]) == 3
    # top-k 2 wins over a looser top-p and min-p
    assert kept(filtered(logits, top_k=2, top_p=0.99, min_p=0.01)[0]) == 2


def test_rows_are_independent():
    """A batch of rows with different settings gives each row what it gets alone."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 20, generator=g)
    settings = [
        (1.0, 0, 1.0, 0.0),
        (0.7, 5, 1.0, 0.0),
        (1.3, 0, 0.6, 0.0),
        (0.9, 8, 0.9, 0.2),
    ]
    cols = list(zip(*settings, strict=True))
    probs, order = sampling_probs(
        logits,
        torch.tensor(cols[0]),
        torch.tensor(cols[1]),
        torch.tensor(cols[2]),
        torch.tensor(cols[3]),
    )
    for b, (tau, k, p, m) in enumerate(settings):
        alone, alone_order = filtered(logits[b : b + 1], tau, k, p, m)
        torch.testing.assert_close(probs[b : b + 1], alone)
        torch.testing.assert_close(
            vocab_order(probs[b : b + 1], order[b : b + 1]), vocab_order(alone, alone_order)
        )
    assert len({int((probs[b] > 0).sum()) for b in range(4)}) > 1  # the settings mattered


def test_vocab_order_restores_ids():
    perm = [3, 0, 4, 1, 2]  # id 3 is the most likely, then 0, 4, 1, 2
    probs5 = [0.4, 0.25, 0.2, 0.1, 0.05]
    logits = logits_of(probs5, perm)
    probs, order = filtered(logits)
    assert order[0].tolist() == perm
    torch.testing.assert_close(vocab_order(probs, order), logits.softmax(-1))
    probs, order = filtered(logits, top_k=2)
    by_id = vocab_order(probs, order)[0]
    assert (by_id > 0).nonzero().flatten().tolist() == [0, 3]
    torch.testing.assert_close(by_id[[3, 0]], torch.tensor([0.4, 0.25]) / 0.65)


# --- draw


def test_draw_is_inverse_cdf():
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0]])  # exact in floating point
    order = torch.tensor([[7, 2, 5, 9]])
    cases = {0.0: 7, 0.25: 7, 0.4999: 7, 0.5: 2, 0.74: 2, 0.75: 5, 0.9: 5, 0.999999: 5}
    for u, want in cases.items():
        got = draw(probs, order, torch.tensor([u]))
        assert got.tolist() == [want], u


def test_draw_per_row_and_unnormalised():
    """Each row uses its own u; the cdf is scaled by its total, so probs need not sum to 1."""
    probs = torch.tensor([[0.6, 0.4, 0.0], [2.0, 1.0, 1.0]])
    order = torch.tensor([[0, 1, 2], [2, 0, 1]])
    assert draw(probs, order, torch.tensor([0.59, 0.49])).tolist() == [0, 2]
    assert draw(probs, order, torch.tensor([0.61, 0.51])).tolist() == [1, 0]
    assert draw(probs, order, torch.tensor([0.99, 0.76])).tolist() == [1, 1]


def test_draw_never_picks_zero_probability():
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(0))
    probs, order = filtered(logits, top_k=4, top_p=0.8)
    n = 20_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(1))
    u[:3] = torch.tensor([0.0, 1 - 2**-24, 0.99999994])  # the extremes of [0, 1) in fp32
    ids = draw(probs.expand(n, -1), order.expand(n, -1), u)
    allowed = set(order[0, probs[0] > 0].tolist())
    assert set(ids.tolist()) <= allowed
    assert len(allowed) < 30


# --- penalties


def test_apply_penalties_math():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, True, False, True, False]])
    counts = torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0, 0.0]])  # generated so far
    out = apply_penalties(
        logits, seen, counts, torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([0.25])
    )
    # repetition: seen positives / 2, seen negatives * 2; unseen untouched
    # frequency 0.5 * count; presence 0.25 where count > 0
    want = torch.tensor([[1.0, -4.0 - 0.5 - 0.25, 0.5 - 1.0 - 0.25, -1.0, 0.25, 3.0]])
    torch.testing.assert_close(out, want)


def test_apply_penalties_neutral_and_per_row():
    logits = torch.randn(2, 6)
    seen = torch.ones(2, 6, dtype=torch.bool)
    counts = torch.full((2, 6), 3.0)
    out = apply_penalties(
        logits,
        seen,
        counts,
        torch.tensor([1.0, 1.5]),
        torch.tensor([0.0, 0.0]),
        torch.tensor([0.0, -1.0]),  # a negative presence penalty encourages repeats
    )
    torch.testing.assert_close(out[0], logits[0])
    r = torch.where(logits[1] > 0, logits[1] / 1.5, logits[1] * 1.5)
    torch.testing.assert_close(out[1], r + 1.0)


# --- Sampler


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_sampler_all_greedy_is_argmax():
    logits = torch.randn(5, 17)
    params = [SamplingParams(temperature=0)] * 5
    sampler = Sampler(params, gens(*range(5)), "cpu", logits.size(-1))
    assert sampler(logits) == logits.argmax(-1).tolist()


def test_sampler_mixed_greedy_and_sampled_rows():
    logits = torch.zeros(3, 8)
    logits[:, 2] = 3.0  # greedy rows: argmax 2
    logits[1] = torch.tensor([0.0, 0.0, 0.1, 0.0, 5.0, 5.0, 0.0, 0.0])  # sampled: 4 or 5
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, top_k=2),
        SamplingParams(temperature=0),
    ]
    seen = set()
    sampler = Sampler(params, gens(0, 1, 2), "cpu", logits.size(-1))
    for _ in range(50):
        a, b, c = sampler(logits)
        assert a == 2 and c == 2
        assert b in (4, 5)
        seen.add(b)
    assert seen == {4, 5}


def test_sampler_matches_draw_with_its_generator():
    logits = torch.randn(2, 12, generator=torch.Generator().manual_seed(5))
    params = [SamplingParams(temperature=0.8, top_k=6), SamplingParams(temperature=1.2, top_p=0.9)]
    sampler = Sampler(params, gens(10, 11), "cpu", logits.size(-1))
    shadow = gens(10, 11)
    probs, order = sampling_probs(
        logits, sampler.temperature, sampler.top_k, sampler.top_p, sampler.min_p
    )
    for _ in range(20):
        u = torch.stack([torch.rand((), generator=g) for g in shadow])
        assert sampler(logits) == draw(probs, order, u).tolist()


def test_sampler_seeded_generator_reproduces():
    logits = torch.randn(2, 30)
    params = [SamplingParams(temperature=1.0)] * 2

    def run(seeds):
        sampler = Sampler(params, gens(*seeds), "cpu", logits.size(-1))
        return [sampler(logits) for _ in range(30)]

    assert run((1, 2)) == run((1, 2))
    assert run((1, 2)) != run((3, 4))
    # a row's draws depend only on its own generator
    assert [r[0] for r in run((1, 2))] == [r[0] for r in run((1, 99))]


def test_sampler_penalties_change_choice():
    logits = torch.tensor([[2.0, 1.9, 0.0], [2.0, 1.9, 0.0]])
    seen = torch.tensor([[True, False, False], [True, False, False]])
    counts = torch.zeros(2, 3)
    params = [
        SamplingParams(temperature=0, repetition_penalty=1.2),
        SamplingParams(temperature=0),
    ]
    assert Sampler(params, gens(0, 1), "cpu", logits.size(-1))(logits, seen, counts) == [1, 0]


def test_sampler_empirical_frequencies():
    logits = torch.tensor([[2.0, 0.5, 1.5, -1.0, 1.0, 0.0]])
    params = [SamplingParams(temperature=0.8, top_k=4, min_p=0.1)]
    sampler = Sampler(params, gens(1234), "cpu", logits.size(-1))
    probs, order = sampling_probs(
        logits, sampler.temperature, sampler.top_k, sampler.top_p, sampler.min_p
    )
    expected = vocab_order(probs, order)[0].double()
    n = 4000
    counts = torch.zeros(6, dtype=torch.float64)
    for _ in range(n):
        counts[sampler(logits)[0]] += 1
    support = expected > 0
    assert int(support.sum()) == 4  # top-k 4, none of them under min-p
    assert counts[~support].sum() == 0
    chi2 = (((counts - n * expected) ** 2)[support] / (n * expected[support])).sum()
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom: p = 0.001


# --- SamplingParams


@pytest.mark.parametrize(
    "bad",
    [
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"top_p": -0.5},
        {"temperature": -0.1},
        {"top_k": -1},
        {"min_p": 1.0},
        {"min_p": -0.1},
        {"repetition_penalty": 0.0},
        {"frequency_penalty": 2.5},
        {"presence_penalty": -2.1},
        {"max_new_tokens": -1},
        {"stop": ("",)},
        {"stop": ("ok", "")},
        {"seed": -1},
        {"seed": 2**63},
        {"seed": 1.5},
        {"seed": True},
    ],
)
def test_sampling_params_validation(bad):
    (field,) = bad
    with pytest.raises(InvalidSampling, match=field) as e:
        SamplingParams(**bad)
    assert e.value.field == field  # what the server reports as the bad request field
    with pytest.raises(ValueError):
        SampleConfig(**bad)


def test_seed_range():
    for seed in (None, 0, 2**63 - 1):
        assert SamplingParams(seed=seed).seed == seed


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_sample_cli_bad_seed_is_one_line(tmp_path, capsys, seed):
    """Refused while parsing, before the run is loaded: one line, exit 2, no traceback."""
    assert main(["sample", str(tmp_path), "--seed", seed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed must be an integer in [0, 2**63)" in err[0], err


def test_sampling_params_defaults_and_penalised():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (1.0, 0, 1.0, 0.0)
    assert not p.penalised
    assert SamplingParams(repetition_penalty=1.1).penalised
    assert SamplingParams(frequency_penalty=-0.5).penalised
    assert SamplingParams(presence_penalty=0.1).penalised
    SamplingParams(temperature=0, top_p=1.0, min_p=0.0, max_new_tokens=0, stop=("x",))


def test_sample_config_params():
    cfg = SampleConfig(temperature=0.5, top_k=7, top_p=0.9, stop=("\n\n",), seed=3)
    p = cfg.params()
    assert isinstance(p, SamplingParams)
    assert (p.temperature, p.top_k, p.top_p, p.stop, p.seed) == (0.5, 7, 0.9, ("\n\n",), 3)
    assert p.max_new_tokens == cfg.max_new_tokens
    with pytest.raises(ValueError):
        SampleConfig(num_samples=0)


def test_sampler_without_filters_draws_from_the_softmax():
    """No top-k/top-p/min-p (top_k >= V counts as none): the fast path without a sort."""
    logits = torch.tensor([[1.0, 0.0, 2.0, -0.5, 0.5]])
    params = [SamplingParams(temperature=0.7, top_k=50)]
    sampler = Sampler(params, gens(7), "cpu", logits.size(-1))
    assert not sampler.filtered
    expected = (logits[0] / 0.7).softmax(-1).double()
    n = 4000
    counts = torch.zeros(5, dtype=torch.float64)
    for _ in range(n):
        counts[sampler(logits)[0]] += 1
    chi2 = ((counts - n * expected) ** 2 / (n * expected)).sum()
    assert chi2 < 18.5  # chi-square, 4 degrees of freedom: p = 0.001
    assert Sampler([SamplingParams(top_k=3)], gens(7), "cpu", 5).filtered
