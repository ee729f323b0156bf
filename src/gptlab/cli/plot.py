"""`gptlab plot RUN_DIR... --out curves.png`: loss curves of one or more runs in one PNG.

Reads only each run's metrics.jsonl (and config.json if need be), so it works on a
finished run, a crashed one, or one still training. By default it draws three panels that
share the y axis: loss against optimizer steps, tokens seen, and wall-clock time. Runs with
different batch sizes only line up on the tokens panel; runs on different hardware only on
the step and tokens panels. Train loss (one optimizer step per row: noisy) is a thin, faint line;
val loss (a fixed held-out set) is bold with markers, so the eye goes to the number that counts.

matplotlib is used through its object API with the Agg canvas: no display, no pyplot state.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from gptlab.cli.common import UsageError, parse
from gptlab.errors import GptlabError

Axis = Literal["step", "tokens", "time"]

METRICS = "metrics.jsonl"  # written by gptlab.train.metrics (kept in step with its METRICS)
CONFIG = "config.json"

_X_LABEL = {"step": "optimizer step", "tokens": "training tokens seen"}
_TITLE = {"step": "loss vs step", "tokens": "loss vs tokens", "time": "loss vs wall-clock time"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlotArgs:
    """Plot train and val loss of one or more runs against steps, tokens and wall-clock time."""

    run_dirs: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR...")]
    """Run directories written by gptlab train (each holds metrics.jsonl)."""
    out: str = "curves.png"
    """Image to write: .png (or .svg, .pdf); its folder is created."""
    x: tuple[Axis, ...] = ("step", "tokens", "time")
    """Panels, left to right: step, tokens and/or time (e.g. --x tokens)."""
    log_y: bool = False
    """Logarithmic loss axis (spreads out the late, flat part of the curves)."""
    metric: str = ""
    """Plot this metrics.jsonl column instead of the losses, e.g. eval/hellaswag/acc_norm,
    val_bpb or grad_norm (default: train and val loss)."""
    title: str = ""
    """Figure title (default: none)."""


@dataclasses.dataclass
class Run:
    """One run's curves: x values per axis for train rows and for eval rows."""

    name: str
    train: dict[str, list[float]]  # axis name or "loss" -> values, one per train row
    val: dict[str, list[float]]  # same, one per eval row
    notes: list[str]  # what could not be drawn, shown on stderr


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as dicts; a half-written last line (a run still writing) is skipped."""
    if not run_dir.is_dir():
        raise GptlabError(f"run directory {run_dir} does not exist; pass a gptlab train out_dir")
    path = run_dir / METRICS
    if not path.is_file():
        raise GptlabError(
            f"{run_dir} has no {METRICS}; is it a gptlab train run directory (--train.out_dir)?"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                continue
            raise GptlabError(f"{path}:{i} is not a JSON object; the file is damaged") from None
        if not isinstance(row, dict) or "step" not in row:
            raise GptlabError(f"{path}:{i} is not a metrics row (no 'step' field)")
        rows.append(row)
    if not rows:
        raise GptlabError(
            f"{path} is empty: the run has not logged yet (rows come every train.log_interval "
            "steps)"
        )
    return rows


def tokens_per_step(run_dir: Path, rows: list[dict[str, Any]]) -> int | None:
    """Tokens per optimizer step over all ranks. Log rows hold it exactly, as tokens_per_s x
    ms_per_step (both come from the loop's own tokens per step, world size and global batch
    included); else config.json's global batch or batch_size x grad_accum_steps x seq_len."""
    for row in rows:
        tps, ms = row.get("tokens_per_s"), row.get("ms_per_step")
        if isinstance(tps, (int, float)) and isinstance(ms, (int, float)) and tps > 0 < ms:
            return round(tps * ms / 1e3)
    try:
        cfg = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
        train, seq_len = cfg["train"], int(cfg["model"]["seq_len"])
        if train.get("global_batch_tokens"):
            return int(train["global_batch_tokens"])
        if train.get("global_batch_size"):
            return int(train["global_batch_size"]) * seq_len
        return int(train["batch_size"]) * int(train.get("grad_accum_steps", 1)) * seq_len
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _wall_clock(rows: list[dict[str, Any]]) -> list[float | None]:
    """elapsed_s made monotonic: each resumed process restarts its clock at 0, so the time of
    earlier processes is added back (the gap while nothing ran is not counted)."""
    out: list[float | None] = []
    offset, last = 0.0, 0.0
    for row in rows:
        t = row.get("elapsed_s")
        if not isinstance(t, (int, float)):
            out.append(None)
            continue
        if t < last:  # a new process after --resume
            offset += last
        last = t
        out.append(offset + t)
    return out


def load_run(run_dir: Path, name: str, metric: str = "") -> Run:
    """Turn metrics rows into plottable series: train and val loss, or (`metric`) that one
    column, drawn like val loss."""
    rows = read_rows(run_dir)
    per_step = tokens_per_step(run_dir, rows)
    times = _wall_clock(rows)
    notes = []
    if per_step is None and not any("tokens" in r for r in rows):
        notes.append(
            f"{name}: no tokens per step in its rows or {CONFIG}; left off the tokens panel"
        )
    train: dict[str, list[float]] = {k: [] for k in ("loss", "step", "tokens", "time")}
    val: dict[str, list[float]] = {k: [] for k in ("loss", "step", "tokens", "time")}
    nan = float("nan")
    keys = ((metric, val),) if metric else (("train_loss", train), ("val_loss", val))
    for row, t in zip(rows, times, strict=True):
        for key, series in keys:
            if not isinstance(row.get(key), (int, float)):
                continue
            step = row["step"]
            tokens = row.get("tokens", step * per_step if per_step is not None else None)
            series["loss"].append(float(row[key]))
            series["step"].append(float(step))
            series["tokens"].append(nan if tokens is None else float(tokens))
            series["time"].append(nan if t is None else t)
    if metric and not val["loss"]:
        numeric = sorted(
            {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
        )
        raise GptlabError(
            f"{run_dir / METRICS} has no {metric!r} values; columns there: {', '.join(numeric)}"
        )
    if not train["loss"] and not val["loss"]:
        raise GptlabError(f"{run_dir / METRICS} holds no train_loss or val_loss values to plot")
    return Run(name, train, val, notes)


def _names(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the paths as given when two runs share a folder name."""
    names = [p.name or str(p) for p in run_dirs]
    return names if len(set(names)) == len(names) else [str(p) for p in run_dirs]


def _time_unit(runs: list[Run]) -> tuple[str, float]:
    longest = max((t for r in runs for t in r.train["time"] + r.val["time"] if t == t), default=0)
    if longest > 3 * 3600:
        return "h", 3600.0
    if longest > 3 * 60:
        return "min", 60.0
    return "s", 1.0


def draw(
    runs: list[Run], out: Path, axes: tuple[str, ...], log_y: bool, title: str, metric: str = ""
) -> None:
    """Write the figure: one panel per x axis, one colour per run."""
    try:
        figure = importlib.import_module("matplotlib.figure")
        ticker = importlib.import_module("matplotlib.ticker")
        lines = importlib.import_module("matplotlib.lines")
    except ImportError as e:
        raise GptlabError(
            f"gptlab plot needs matplotlib ({e}); run pip install 'gptlab[plot]'"
        ) from None
    unit, scale = _time_unit(runs)
    fig = figure.Figure(figsize=(5.2 * len(axes), 4.2), layout="constrained")
    panels = fig.subplots(1, len(axes), sharey=True, squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, axis in zip(panels, axes, strict=True):
        for run, colour in zip(runs, colours, strict=True):
            k = 1.0 / scale if axis == "time" else 1.0
            tx, vx = [x * k for x in run.train[axis]], [x * k for x in run.val[axis]]
            ax.plot(tx, run.train["loss"], color=colour, lw=0.9, alpha=0.45)
            ax.plot(vx, run.val["loss"], color=colour, lw=2.0, marker="o", ms=4)
        ax.set_title(f"{metric} vs {axis}" if metric else _TITLE[axis])
        ax.set_xlabel(_X_LABEL.get(axis, f"wall-clock time ({unit}, incl. startup and eval)"))
        if axis == "tokens":
            ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
        if log_y:  # plain numbers (3.2, not 3.2x10^0) on major and minor ticks
            ax.set_yscale("log")
            plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    panels[0].set_ylabel((metric or "loss (nats/token)") + (", log scale" if log_y else ""))
    handles = [lines.Line2D([], [], color=c, lw=2.0) for c in colours]
    handles += [
        lines.Line2D([], [], color="0.4", lw=0.9, alpha=0.6),
        lines.Line2D([], [], color="0.4", lw=2.0, marker="o", ms=4),
    ]
    labels = [r.name for r in runs] + ["train (one batch)", metric or "val (held out)"]
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")  # off the curves
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def run(argv: list[str]) -> int:
    args = parse(PlotArgs, argv, prog="gptlab plot")
    if not args.run_dirs:
        raise UsageError("give at least one run directory: gptlab plot RUN_DIR... --out FILE")
    if not args.x:
        raise UsageError("--x needs at least one of step, tokens, time")
    if Path(args.out).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--out {args.out!r} must end in .png (or .svg, .pdf)")
    dirs = [Path(d) for d in args.run_dirs]
    runs = [load_run(d, n, args.metric) for d, n in zip(dirs, _names(dirs), strict=True)]
    for r in runs:
        for note in r.notes:
            print(f"note: {note}", file=sys.stderr)
    out = Path(args.out)
    draw(runs, out, tuple(dict.fromkeys(args.x)), args.log_y, args.title, args.metric)
    print(f"wrote {out} ({len(runs)} run{'s' if len(runs) > 1 else ''}: {', '.join(args.x)})")
    return 0
