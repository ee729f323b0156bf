"""Fit the scaling law L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla's third approach).

Hoffmann et al. (2022) fit the law to final losses by minimising a Huber loss between the
predicted and the observed *log* loss, with the prediction written as a log-sum-exp so the
optimiser works on log A, log B, log E:

    log L_hat(N, D) = LSE(a - alpha log N, b - beta log D, e)      A = e^a, B = e^b, E = e^e
    objective       = sum_i Huber_delta(log L_hat(N_i, D_i) - log L_i),   delta = 1e-3

The objective has many local minima, so L-BFGS-B (scipy) starts from many points of a grid.
Evaluating the objective on the whole grid is cheap (numpy), so we run the optimiser from the
best `n_starts` grid points rather than from all of them.

With a fixed tokens-per-parameter ratio D is proportional to N and only A/N^alpha + B/D^beta
as one power of N is identifiable: the fit needs several D per N (two token budgets per size,
or evaluations along each run). Minimising L under C = 6ND gives the compute-optimal frontier
N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6) / N_opt,
G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gptlab.errors import GptlabError

log = logging.getLogger(__name__)

# Chinchilla's initialisation grid (their appendix D.2)
GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
# (a, b, e, alpha, beta): wide enough for any language model, finite so L-BFGS-B stays sane
BOUNDS = [(-20.0, 60.0), (-20.0, 60.0), (-10.0, 10.0), (0.0, 4.0), (0.0, 4.0)]


@dataclasses.dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def predict(self, n: Any, d: Any) -> Any:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def frontier(self, flops: Any) -> tuple[Any, Any, Any]:
        """(N_opt, D_opt, L_opt) minimising the loss at compute C = 6ND, for each C."""
        c = np.asarray(flops, dtype=float)
        if self.alpha <= 0 or self.beta <= 0:
            raise GptlabError(
                f"the fit has alpha {self.alpha:.3g}, beta {self.beta:.3g}: with an exponent "
                "of 0 more parameters (or tokens) never help, so there is no compute-optimal "
                "frontier; add sizes or token budgets to the sweep"
            )
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * (c / 6) ** (self.beta / (self.alpha + self.beta))
        d = (c / 6) / n
        return n, d, self.predict(n, d)


@dataclasses.dataclass(frozen=True)
class FitResult:
    law: Law
    objective: float  # the summed Huber loss at the optimum
    n_points: int
    n_starts: int
    params_convention: str
    huber_delta: float
    points: tuple[tuple[float, float, float], ...]  # (N, D, L) fitted

    def to_dict(self) -> dict[str, Any]:
        law = dataclasses.asdict(self.law)
        a, b = self.law.alpha, self.law.beta
        out = {
            "law": "L(N, D) = E + A / N^alpha + B / D^beta",
            "params": law,
            "params_convention": self.params_convention,
            "objective": self.objective,
            "huber_delta": self.huber_delta,
            "n_points": self.n_points,
            "n_starts": self.n_starts,
        }
        if a > 0 and b > 0:  # N_opt ~ C^(beta / (alpha + beta)), D_opt ~ C^(alpha / (alpha + beta))
            out["frontier_exponents"] = {"n_opt": b / (a + b), "d_opt": a / (a + b)}
        return out


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return value, grad


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """(..., 3, P): the three log-terms a - alpha log N, b - beta log D, e per point."""
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.stack(
        [a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, a.shape[:-1] + log_n.shape)],
        axis=-2,
    )


def _objective(theta: np.ndarray, log_n, log_d, log_l, delta: float) -> tuple[float, np.ndarray]:
    t = _terms(theta, log_n, log_d)  # (3, P)
    m = t.max(axis=0)
    w = np.exp(t - m)  # (3, P)
    s = w.sum(axis=0)
    r = m + np.log(s) - log_l  # (P,) log-prediction residuals
    value, dr = _huber(r, delta)
    w = w / s  # softmax weights: d LSE / d term
    grad = np.array(
        [
            (dr * w[0]).sum(),
            (dr * w[1]).sum(),
            (dr * w[2]).sum(),
            -(dr * w[0] * log_n).sum(),
            -(dr * w[1] * log_d).sum(),
        ]
    )
    return float(value.sum()), grad


def _grid_objectives(grid: np.ndarray, log_n, log_d, log_l, delta: float) -> np.ndarray:
    """The objective at every grid point at once: (G,)."""
    t = _terms(grid, log_n, log_d)  # (G, 3, P)
    m = t.max(axis=1)
    lse = m + np.log(np.exp(t - m[:, None]).sum(axis=1))
    value, _ = _huber(lse - log_l, delta)
    return value.sum(axis=1)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """L-BFGS-B's 5x5 linear algebra in one BLAS thread: with several, OpenBLAS's threads
    spin against each other and against other processes (measured 40x slower per fit on a
    loaded 2-core machine). threadpoolctl (a scikit-learn dependency) scopes the limit to the
    fit; without it the fit is only slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_law(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    delta: float = 1e-3,
    n_starts: int = 64,
    grid: Mapping[str, Sequence[float]] = GRID,
) -> tuple[Law, float, int]:
    """Fit (N, D, L) points; returns (law, objective, starts run)."""
    from scipy.optimize import minimize

    n_, d_, l_ = (np.asarray(x, dtype=float) for x in (n, d, loss))
    if not (len(n_) == len(d_) == len(l_)):
        raise ValueError("n, d and loss must have the same length")
    if len(n_) < 5:
        raise GptlabError(
            f"a scaling fit has 5 parameters and needs at least 5 points, got {len(n_)}; "
            "add sizes, token budgets or evaluations per run"
        )
    if (n_ <= 0).any() or (d_ <= 0).any() or (l_ <= 0).any() or not np.isfinite(l_).all():
        raise GptlabError("scaling-fit points need positive N, D and a finite positive loss")
    log_n, log_d, log_l = np.log(n_), np.log(d_), np.log(l_)
    combos = itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])
    starts = np.array(list(combos), dtype=float)  # (G, 5) in (a, b, e, alpha, beta) order
    order = np.argsort(_grid_objectives(starts, log_n, log_d, log_l, delta))
    best: tuple[float, np.ndarray] | None = None
    with _one_blas_thread():
        for theta0 in starts[order[:n_starts]]:
            res = minimize(
                _objective,
                theta0,
                args=(log_n, log_d, log_l, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=BOUNDS,
                # the objective is tiny near the optimum (0.5 r^2 with r ~ 1e-3): stop on the
                # gradient, not on scipy's default relative decrease, or fits end early
                options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000},
            )
            if best is None or res.fun < best[0]:
                best = (float(res.fun), res.x)
    assert best is not None
    a, b, e, alpha, beta = best[1]
    law = Law(
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        B=float(np.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
    )
    return law, best[0], min(n_starts, len(starts))


def _point(item: Any, metric: str) -> tuple[float, float, float] | None:
    """(N, D, L) from a point mapping {params, tokens, loss}, a (N, D, L) triple, or a sweep
    record (status done, scale.params, final.tokens, final[metric]); None for a failed run."""
    if isinstance(item, Mapping):
        if "loss" in item:
            return float(item["params"]), float(item["tokens"]), float(item["loss"])
        if item.get("status") != "done":
            return None
        final = item.get("final") or {}
        value = final.get(metric, item.get("value") if item.get("metric") == metric else None)
        if value is None or "scale" not in item:
            raise GptlabError(
                f"record of {item.get('variant')} seed {item.get('seed')} has no {metric} or no "
                "scale.params; is it from gptlab scale?"
            )
        return float(item["scale"]["params"]), float(final["tokens"]), float(value)
    n, d, loss = item
    return float(n), float(d), float(loss)


def fit(
    results: Iterable[Any],
    *,
    metric: str = "val_loss",
    params_convention: str = "non_embedding",
    delta: float = 1e-3,
    n_starts: int = 64,
) -> FitResult:
    """Fit L(N, D) to `results`: (N, D, L) triples, {params, tokens, loss} mappings, or the
    records of a `gptlab scale` sweep (failed runs are skipped). `params_convention` says how
    N was counted; it is recorded with the fit."""
    points = [p for p in (_point(r, metric) for r in results) if p is not None]
    n, d, loss = zip(*points, strict=True) if points else ((), (), ())
    law, objective, starts = fit_law(n, d, loss, delta=delta, n_starts=n_starts)
    log.info("fitted %s on %d points", law, len(points))
    return FitResult(
        law=law,
        objective=objective,
        n_points=len(points),
        n_starts=starts,
        params_convention=params_convention,
        huber_delta=delta,
        points=tuple(points),
    )
