"""The Chinchilla fit recovers known laws from synthetic losses; the frontier is its optimum."""

import numpy as np
import pytest

from gptlab.errors import GptlabError
from gptlab.scale import fit
from gptlab.scale.fit import Law


def _points(law, n_sizes, ratios, noise=0.0, seed=0):
    n = np.repeat(n_sizes, len(ratios))
    d = n * np.tile(ratios, len(n_sizes))
    loss = law.predict(n, d) * (1 + noise * np.random.default_rng(seed).standard_normal(n.size))
    return list(zip(n, d, loss, strict=True))


def test_recovers_chinchillas_law():
    true = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022
    result = fit(_points(true, np.logspace(7.5, 9.5, 5), [5.0, 20.0, 80.0]), n_starts=16)
    got = result.law
    assert got.alpha == pytest.approx(0.34, abs=0.01)
    assert got.beta == pytest.approx(0.28, abs=0.01)
    e, a, b = got.E, got.A, got.B
    assert e == pytest.approx(1.69, rel=0.01)
    assert a == pytest.approx(406.4, rel=0.1) and b == pytest.approx(410.7, rel=0.1)
    assert result.n_points == 15


def test_small_model_law_with_noise_predicts_a_held_out_size():
    true = Law(E=0.9, A=40.0, B=80.0, alpha=0.45, beta=0.35)
    result = fit(_points(true, np.logspace(4, 5.5, 4), [8.0, 32.0], noise=0.002))
    n, d = 10**6, 16 * 10**6
    assert result.law.predict(n, d) == pytest.approx(true.predict(n, d), rel=0.01)
    assert result.law.alpha == pytest.approx(0.45, abs=0.1)


def test_accepts_point_mappings_and_sweep_records():
    true = Law(E=1.0, A=30.0, B=60.0, alpha=0.4, beta=0.3)
    triples = _points(true, np.logspace(4, 5, 3), [10.0, 40.0])
    points = [{"params": n, "tokens": d, "loss": loss} for n, d, loss in triples]
    records = [
        {
            "status": "done",
            "variant": "d",
            "seed": 1,
            "scale": {"params": n},
            "final": {"tokens": d, "val_loss": loss},
        }
        for n, d, loss in triples
    ] + [{"status": "failed", "variant": "d9", "seed": 1}]
    a = fit(points, params_convention="total", n_starts=16)
    b = fit(records, n_starts=16)
    e_a, e_b = a.law.E, b.law.E
    assert e_a == pytest.approx(e_b) and a.n_points == b.n_points == 6
    assert a.to_dict()["params_convention"] == "total"


def test_frontier_minimises_loss_at_fixed_compute():
    law = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    c = 1e21
    n_opt, d_opt, l_opt = law.frontier(c)
    assert 6 * n_opt * d_opt == pytest.approx(c)
    for factor in (0.5, 0.8, 1.25, 2.0):  # any other split of the same compute is worse
        n = n_opt * factor
        assert law.predict(n, c / (6 * n)) > l_opt
    # exponents: N_opt ~ C^(beta/(alpha+beta))
    n2, _, _ = law.frontier(10 * c)
    assert np.log10(n2 / n_opt) == pytest.approx(0.28 / 0.62)


def test_too_few_points_is_one_clear_error():
    with pytest.raises(GptlabError, match="at least 5 points"):
        fit([(1e4, 1e5, 2.0), (2e4, 2e5, 1.9)])
