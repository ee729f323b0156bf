"""The ablation report, rebuilt from OUT/results.jsonl and the runs' metrics.jsonl at any time
(`gptlab ablate --report OUT`): summary.json (numbers), report.md (the table and verdicts) and
report.html (the same with the plots embedded), plus the PNGs.

Plots: the validation curve of each variant, mean over seeds with a band of +-1 standard
deviation, against steps, training tokens and training time; each seed's curve is interpolated
onto a shared grid over the range every seed covers (with a time budget, seeds stop at
different steps). A bar chart shows each variant's mean metric with its 95% interval.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from gptlab.ablate import stats
from gptlab.ablate.runner import METRICS, parse_time_to, read_jsonl, read_results
from gptlab.ablate.spec import SPEC_FILE, higher_is_better
from gptlab.errors import GptlabError

SUMMARY = "summary.json"
CURVES_PNG = "curves.png"
BARS_PNG = "bars.png"
AXES = (("step", "step"), ("tokens", "training tokens"), ("train_time_s", "training time (s)"))


def _num(x: Any) -> float | None:
    """JSON-safe number: nan and inf become null."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def summarize_results(records: list[dict[str, Any]], spec: dict[str, Any] | None) -> dict:
    """summary.json's content: per variant statistics, comparisons with the baseline (Welch,
    Holm-corrected), verdicts, cost, and the failed runs."""
    if not records:
        raise GptlabError("results.jsonl holds no runs yet; run the ablation first")
    spec = spec or {}
    metric = spec.get("metric") or records[0].get("metric", "val_bpb")
    order = list(dict.fromkeys(r["variant"] for r in records))
    baseline = spec.get("baseline") or order[0]
    if baseline not in order:
        order.insert(0, baseline)
    up = higher_is_better(metric)
    done = [r for r in records if r.get("status") == "done"]
    values = {
        v: [float(r["value"]) for r in done if r["variant"] == v and r.get("value") is not None]
        for v in order
    }
    base_vals = values[baseline]
    rows = []
    for v in order:
        s = stats.summarize(values[v])
        c = stats.compare(values[v], base_vals) if v != baseline else None
        finals = [r.get("final", {}) for r in done if r["variant"] == v]
        rows.append(
            {
                "variant": v,
                "is_baseline": v == baseline,
                "n": s.n,
                "n_failed": sum(r["variant"] == v and r.get("status") != "done" for r in records),
                "n_not_reached": sum(r["variant"] == v and r.get("value") is None for r in done),
                "mean": _num(s.mean),
                "std": _num(s.std),
                "ci95": [_num(s.ci_low), _num(s.ci_high)],
                "diff": _num(c.diff) if c else None,
                "diff_ci95": [_num(c.ci_low), _num(c.ci_high)] if c else None,
                "p_value": _num(c.p_value) if c else None,
                "tokens_per_s": _mean([f.get("tokens_per_s") for f in finals]),
                "train_time_s": _mean([f.get("train_time_s") for f in finals]),
                "wall_s": _mean([r.get("wall_s") for r in done if r["variant"] == v]),
                "steps": _mean([f.get("step") for f in finals]),
                "params": next((f["params"] for f in finals if f.get("params")), None),
                "_c": c,
            }
        )
    others = [r for r in rows if not r["is_baseline"]]
    adjusted = stats.holm([r["p_value"] if r["p_value"] is not None else math.nan for r in others])
    for r, p in zip(others, adjusted, strict=True):
        r["p_holm"] = _num(p)
        n = min(r["n"], len(base_vals))
        r["verdict"] = stats.verdict(r["_c"], p, n, up)
    for r in rows:
        del r["_c"]
        if r["is_baseline"]:
            r["p_holm"], r["verdict"] = None, "baseline"
    failed = [
        {"variant": r["variant"], "seed": r["seed"], "error": r.get("error", "")}
        for r in records
        if r.get("status") != "done"
    ]
    return {
        "name": spec.get("name", ""),
        "metric": metric,
        "higher_is_better": up,
        "baseline": baseline,
        "budget": spec.get("budget"),
        "seeds": spec.get("seeds"),
        "runs": len(records),
        "failed": failed,
        "variants": rows,
        "git_commits": sorted({r.get("git_commit", "unknown") for r in records}),
        "machine": next((r["machine"] for r in records if r.get("machine")), None),
    }


# ---------------------------------------------------------------- plots


def _curves(records: list[dict[str, Any]], out: Path, y_key: str) -> dict[str, list[list[dict]]]:
    """variant -> the eval rows of each finished seed."""
    by_variant: dict[str, list[list[dict]]] = {}
    for r in records:
        if r.get("status") != "done":
            continue
        run_dir = Path(r["run_dir"])
        run_dir = run_dir if run_dir.is_absolute() else out / run_dir
        rows = [x for x in read_jsonl(run_dir / METRICS) if y_key in x]
        if rows:
            by_variant.setdefault(r["variant"], []).append(rows)
    return by_variant


def _band(seeds: list[list[dict]], x_key: str, y_key: str):
    """(grid, mean, std) of the seeds' curves on a shared grid over their common x range."""
    import numpy as np

    curves = [
        (np.array([r[x_key] for r in rows], float), np.array([r[y_key] for r in rows], float))
        for rows in seeds
        if all(x_key in r for r in rows)
    ]
    if not curves:
        return None
    lo, hi = max(x.min() for x, _ in curves), min(x.max() for x, _ in curves)
    if len(curves) == 1 or hi <= lo:
        x, y = curves[0]
        return x, y, np.zeros_like(y)
    grid = np.linspace(lo, hi, 50)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(0), ys.std(0, ddof=1)


def plot_curves(records: list[dict[str, Any]], out: Path, y_key: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_variant = _curves(records, out, y_key)
    if not by_variant:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, (x_key, label) in zip(axes, AXES, strict=True):
        for k, (variant, seeds) in enumerate(by_variant.items()):
            band = _band(seeds, x_key, y_key)
            if band is None:
                continue
            x, mean, std = band
            color = f"C{k % 10}"
            ax.plot(x, mean, color=color, label=f"{variant} (n={len(seeds)})")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{y_key} (mean +- 1 std over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_bars(summary: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["variants"] if r["mean"] is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1), 4.2))
    means = [r["mean"] for r in rows]
    errs = [
        [r["mean"] - (r["ci95"][0] if r["ci95"][0] is not None else r["mean"]) for r in rows],
        [(r["ci95"][1] if r["ci95"][1] is not None else r["mean"]) - r["mean"] for r in rows],
    ]
    colors = ["0.55" if r["is_baseline"] else f"C{k % 10}" for k, r in enumerate(rows)]
    ax.bar(range(len(rows)), means, yerr=errs, capsize=5, color=colors)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=20, ha="right")
    spread = max(means) - min(means) + max(max(e) for e in errs)
    ax.set_ylim(min(means) - 1.5 * spread - 1e-9, max(means) + 1.5 * spread + 1e-9)
    ax.set_ylabel(f"{summary['metric']} (mean, 95% CI; baseline grey)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- text


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(pair: list[float | None] | None, digits: int = 4) -> str:
    if not pair or pair[0] is None:
        return "-"
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


def table(summary: dict[str, Any]) -> list[str]:
    """The report's Markdown table, one row per variant."""
    head = (
        "| variant | n | mean | std | 95% CI | diff vs baseline [95% CI] | p (Welch) | p (Holm) "
        "| verdict | tokens/s | train time (s) | steps | params |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in summary["variants"]:
        n = f"{r['n']}" + (f" ({r['n_failed']} failed)" if r["n_failed"] else "")
        if r["n_not_reached"]:
            n += f" ({r['n_not_reached']} never reached)"
        diff = "-" if r["diff"] is None else f"{r['diff']:+.4f} {_ci(r['diff_ci95'])}"
        lines.append(
            f"| {r['variant']} | {n} | {_f(r['mean'])} | {_f(r['std'])} | {_ci(r['ci95'])} "
            f"| {diff} | {_p(r['p_value'])} | {_p(r['p_holm'])} | {r['verdict']} "
            f"| {_f(r['tokens_per_s'], 0)} | {_f(r['train_time_s'], 1)} | {_f(r['steps'], 0)} "
            f"| {r['params'] if r['params'] is not None else '-'} |"
        )
    return lines


def markdown(summary: dict[str, Any], images: dict[str, str]) -> str:
    """report.md; `images` maps a caption to a PNG's file name (or data: URL for HTML)."""
    direction = "higher" if summary["higher_is_better"] else "lower"
    lines = [
        f"# Ablation report: {summary['name'] or 'ablation'}",
        "",
        f"Metric **{summary['metric']}** ({direction} is better), baseline "
        f"**{summary['baseline']}**, budget {json.dumps(summary['budget'])}, seeds "
        f"{summary['seeds']}. {summary['runs']} runs, {len(summary['failed'])} failed.",
        "",
        *table(summary),
        "",
        "Mean and standard deviation over seeds; the 95% CI is Student's t interval of the mean; "
        "the difference from the baseline comes with Welch's 95% interval and two-sided "
        "p-value, Holm-corrected over the variants compared. 'No detectable difference' means "
        "these seeds cannot tell the variants apart, not that they are equal.",
        "",
    ]
    if summary["failed"]:
        lines += ["## Failed runs", ""]
        lines += [f"- {f['variant']} seed {f['seed']}: {f['error']}" for f in summary["failed"]]
        lines.append("")
    for caption, src in images.items():
        lines += [f"## {caption}", "", f"![{caption}]({src})", ""]
    machine = summary.get("machine") or {}
    lines += [
        "## Provenance",
        "",
        f"- git commit: {', '.join(summary['git_commits'])}",
        f"- machine: {machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs, "
        f"host {machine.get('host', '?')}, Python {machine.get('python', '?')}",
        "",
    ]
    return "\n".join(lines)


def _html(md_text: str, images: dict[str, str]) -> str:
    """A self-contained page: the Markdown table as HTML, the PNGs as data URLs."""
    body = []
    in_table = False
    for line in md_text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            caption = line[2 : line.index("]")]
            body.append(f'<img alt="{html.escape(caption)}" src="{images[caption]}">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ablation report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build_report(out: Path) -> dict[str, Any]:
    """Write summary.json, report.md, report.html and the PNGs of OUT; return the summary."""
    out = Path(out)
    if not (out / "results.jsonl").is_file():
        raise GptlabError(f"{out} holds no results.jsonl; give the --out folder of an ablation")
    records = read_results(out)
    spec_path = out / SPEC_FILE
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else None
    summary = summarize_results(records, spec)
    metric = summary["metric"]
    target = parse_time_to(metric)
    y_key = target[0] if target else metric
    images: dict[str, str] = {}
    if plot_curves(records, out, y_key, out / CURVES_PNG):
        images[f"{y_key} curves over seeds"] = CURVES_PNG
    if plot_bars(summary, out / BARS_PNG):
        images[f"{metric} by variant"] = BARS_PNG
    _write(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    md = markdown(summary, images)
    _write(out / "report.md", md)
    embedded = {
        caption: "data:image/png;base64," + base64.b64encode((out / name).read_bytes()).decode()
        for caption, name in images.items()
    }
    _write(out / "report.html", _html(md, embedded))
    return summary
