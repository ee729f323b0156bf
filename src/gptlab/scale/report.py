"""The sweep's report: fit the law on every size but the held-out one, predict the held-out
size's loss, and write report.md, scaling.png and summary.json into the sweep folder.

Rebuilt from results.jsonl and the runs' metrics.jsonl alone (`gptlab scale SPEC --out DIR
--report`), so a finished or interrupted sweep can be re-fitted without training.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import GptlabError
from gptlab.scale.config import PARAM_CONVENTIONS
from gptlab.scale.fit import FitResult, Law, fit
from gptlab.scale.spec import ScaleSpec
from gptlab.scale.sweep import SizeRun, measured_points, plan

log = logging.getLogger(__name__)

REPORT, PLOT, SUMMARY = "report.md", "scaling.png", "summary.json"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _holdout_rows(
    law: Law | None, points: list, runs: list[SizeRun], spec: ScaleSpec
) -> list[dict[str, Any]]:
    """Predicted vs actual loss of the held-out size, per token budget (mean over seeds)."""
    rows = []
    for ratio in spec.param_data_ratios:
        held = [p for p in points if p[0].holdout and p[0].ratio == ratio]
        planned = next(r for r in runs if r.holdout and r.ratio == ratio)
        row: dict[str, Any] = {
            "variant": planned.variant,
            "depth": planned.depth,
            "ratio": ratio,
            "params": planned.params,
            "tokens": planned.tokens,
            "n_seeds": len(held),
        }
        if held:
            tokens = statistics.fmean(p[2] for p in held)
            row["tokens"] = int(tokens)
            row["actual"] = statistics.fmean(p[3] for p in held)
        if law is not None:
            row["predicted"] = float(law.predict(planned.params, row["tokens"]))
        if "actual" in row and "predicted" in row:
            row["error"] = row["predicted"] / row["actual"] - 1
        rows.append(row)
    return rows


def _plot(path: Path, result: FitResult, points: list, holdout: list, spec: ScaleSpec) -> None:
    """Loss vs N with the fitted curve of each token budget; the compute-optimal frontier."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.ticker import NullFormatter

    law = result.law
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_n, ax_c, ax_opt = fig.subplots(1, 3)
    n_all = [p[1] for p in points]
    n_grid = np.geomspace(min(n_all) / 1.5, max(n_all) * 1.5, 100)
    colours = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for i, ratio in enumerate(spec.param_data_ratios):
        c = colours[i % len(colours)]
        fitted = [p for p in points if not p[0].holdout and p[0].ratio == ratio]
        ax_n.scatter(
            [p[1] for p in fitted],
            [p[3] for p in fitted],
            color=c,
            s=18,
            label=f"{ratio:g} tokens/param",
        )
        ax_n.plot(n_grid, law.predict(n_grid, ratio * n_grid), color=c, lw=1, alpha=0.7)
        for row in holdout:
            if row["ratio"] == ratio and "actual" in row:
                ax_n.scatter(
                    [row["params"]],
                    [row["actual"]],
                    color=c,
                    marker="s",
                    s=50,
                    edgecolor="k",
                    zorder=3,
                )
            if row["ratio"] == ratio and "predicted" in row:
                ax_n.scatter(
                    [row["params"]], [row["predicted"]], color=c, marker="x", s=60, zorder=3
                )
    ax_n.set(
        xscale="log",
        xlabel=f"N ({spec.auto.params} parameters)",
        ylabel=spec.metric,
        title="fit (lines), held out: actual (square), predicted (x)",
    )
    ax_n.legend(fontsize=8)

    c_runs = [6 * p[1] * p[2] for p in points]
    c_grid = np.geomspace(min(c_runs) / 2, max(c_runs) * 4, 100)
    ax_c.scatter(c_runs, [p[3] for p in points], s=14, color="0.4", label="runs")
    try:
        n_opt, d_opt, l_opt = law.frontier(c_grid)
    except GptlabError:
        n_opt = None
        ax_opt.text(0.5, 0.5, "no frontier:\nan exponent is 0", ha="center", va="center")
        ax_opt.set_axis_off()
    if n_opt is not None:
        ax_c.plot(c_grid, l_opt, color="C3", label="compute-optimal L(C)")
        ax_opt.plot(c_grid, n_opt, label="N_opt(C)")
        ax_opt.plot(c_grid, d_opt, label="D_opt(C)")
        ax_opt.set(
            xscale="log", yscale="log", xlabel="C = 6ND (FLOPs)", title="compute-optimal split"
        )
        ax_opt.legend(fontsize=8)
    ax_c.set(xscale="log", xlabel="C = 6ND (FLOPs)", ylabel=spec.metric, title="loss vs compute")
    ax_c.legend(fontsize=8)
    for ax in (ax_n, ax_c):  # label decades only: minor labels overlap on narrow ranges
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.savefig(path.with_name(f".{path.name}.tmp.png"), dpi=110)
    path.with_name(f".{path.name}.tmp.png").replace(path)


def _markdown(spec: ScaleSpec, summary: dict[str, Any]) -> str:
    fit_d, law = summary.get("fit"), summary.get("fit", {}).get("params")
    lines = [
        f"# Scaling sweep: {spec.name}",
        "",
        f"Sizes {list(spec.depths)} fitted, depth {spec.holdout} held out; token budgets "
        f"{list(spec.param_data_ratios)} tokens per parameter; seeds {list(spec.seeds)}; metric "
        f"{spec.metric}; fit points: {spec.points}.",
        f"N counts {spec.auto.params} parameters: {PARAM_CONVENTIONS[spec.auto.params]}.",
        "",
        "## Held-out prediction",
        "",
        "| run | N | D | predicted | actual | error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary["holdout"]:
        pred = f"{row['predicted']:.4f}" if "predicted" in row else "-"
        act = f"{row['actual']:.4f}" if "actual" in row else "not trained"
        err = f"{100 * row['error']:+.2f} %" if "error" in row else "-"
        lines.append(
            f"| {row['variant']} | {row['params']:,} | {row['tokens']:,} | {pred} | {act} | {err} |"
        )
    lines += ["", "## Fit", ""]
    if law is None:
        lines.append(f"No fit: {summary.get('fit_error', 'no points')}")
    else:
        lines += [
            f"L(N, D) = E + A / N^alpha + B / D^beta, Chinchilla's approach 3 (Huber delta "
            f"{fit_d['huber_delta']:g} on log-loss, L-BFGS-B from {fit_d['n_starts']} grid "
            f"starts), on {fit_d['n_points']} points:",
            "",
            "| E | A | alpha | B | beta |",
            "|---:|---:|---:|---:|---:|",
            f"| {law['E']:.4f} | {law['A']:.4g} | {law['alpha']:.3f} | {law['B']:.4g} | "
            f"{law['beta']:.3f} |",
            "",
        ]
        if "frontier_exponents" in fit_d:
            fe = fit_d["frontier_exponents"]
            lines.append(
                f"Compute-optimal frontier under C = 6ND: N_opt ∝ C^{fe['n_opt']:.3f}, "
                f"D_opt ∝ C^{fe['d_opt']:.3f}."
            )
        else:
            lines.append(
                "No compute-optimal frontier: a fitted exponent is 0 (more N or more D never "
                "helps in this fit); the sizes or token budgets span too little to separate them."
            )
        lines += ["", f"![fit and frontier]({PLOT})", ""]
    lines += [
        "## Runs",
        "",
        "| run | seed | status | N | D | loss |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in summary["runs"]:
        loss = f"{r['loss']:.4f}" if r.get("loss") is not None else "-"
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['status']} | {r['params']:,} | "
            f"{r['tokens']:,} | {loss} |"
        )
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    if failed:
        lines += ["", f"{len(failed)} run(s) failed and are left out of the fit:"]
        lines += [f"- {r['variant']} seed {r['seed']}: {r.get('error', '')}" for r in failed]
    return "\n".join(lines) + "\n"


def build_report(spec: ScaleSpec, out: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit, predict the held-out size, and write report.md, scaling.png and summary.json."""
    runs = plan(spec, out)
    by_key = {(r.get("variant"), r.get("seed")): r for r in records}
    done = {k for k, r in by_key.items() if r.get("status") == "done"}
    points = measured_points(spec, runs, done)
    fit_points = [p for p in points if not p[0].holdout]
    summary: dict[str, Any] = {
        "name": spec.name,
        "metric": spec.metric,
        "points": spec.points,
        "params_convention": spec.auto.params,
        "depths": list(spec.depths),
        "holdout_depth": spec.holdout,
        "param_data_ratios": list(spec.param_data_ratios),
        "seeds": list(spec.seeds),
    }
    result = None
    try:
        result = fit([(p[1], p[2], p[3]) for p in fit_points], params_convention=spec.auto.params)
        summary["fit"] = result.to_dict()
    except GptlabError as e:
        summary["fit_error"] = str(e)
    summary["holdout"] = _holdout_rows(result.law if result else None, points, runs, spec)
    errors = [abs(r["error"]) for r in summary["holdout"] if "error" in r]
    if errors:
        summary["holdout_max_abs_error"] = max(errors)
    finals = {(p[0].variant, p[0].seed): p for p in points}  # the last point of each run
    summary["runs"] = []
    for r in runs:
        rec = by_key.get((r.variant, r.seed), {})
        p = finals.get((r.variant, r.seed))
        row = {
            "variant": r.variant,
            "seed": r.seed,
            "depth": r.depth,
            "ratio": r.ratio,
            "holdout": r.holdout,
            "status": rec.get("status", "not run"),
            "params": r.params,
            "tokens": int(p[2]) if p else r.tokens,
            "loss": p[3] if p else None,
            "run_dir": str(r.run_dir),
        }
        if rec.get("error"):
            row["error"] = rec["error"]
        summary["runs"].append(row)
    if result is not None and fit_points:
        _plot(out / PLOT, result, points, summary["holdout"], spec)
    _write(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    _write(out / REPORT, _markdown(spec, summary))
    log.info("wrote %s, %s and %s in %s", REPORT, PLOT, SUMMARY, out)
    return summary
