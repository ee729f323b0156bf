"""Reading what runs wrote: the .jsonl files (OUT/results.jsonl, each run's metrics.jsonl),
the latest record of each (variant, seed), and a run's final numbers and metric value.

Separate from the runner because the report (report.py) and `gptlab scale` read results
without launching anything; this module starts no process and imports torch only to count a
run's parameters. A line a kill cut off mid-write is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError

RESULTS = "results.jsonl"
METRICS = "metrics.jsonl"  # what training writes in each run directory


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, skipping a line cut off mid-write."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_results(out: Path) -> list[dict[str, Any]]:
    """The latest record of each (variant, seed) in OUT/results.jsonl, in first-seen order."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in read_jsonl(Path(out) / RESULTS):
        if "variant" in rec and "seed" in rec:
            key = (str(rec["variant"]), int(rec["seed"]))
            latest.pop(key, None)  # re-insert: the order is that of the latest records
            latest[key] = rec
    return list(latest.values())


def parse_time_to(metric: str) -> tuple[str, str, float] | None:
    """'time_to:val_loss<=1.9' -> ('val_loss', '<=', 1.9); None for a plain metric name;
    ConfigError for a malformed one."""
    if not metric.startswith("time_to:"):
        return None
    body = metric.removeprefix("time_to:")
    for op in ("<=", ">="):
        key, sep, target = body.partition(op)
        if sep:
            try:
                return key.strip(), op, float(target)
            except ValueError:
                break
    raise ConfigError(
        f"metric {metric!r} is not time_to:METRIC<=X (or >=X), e.g. time_to:val_loss<=1.9"
    )


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's final numbers from its metrics.jsonl: the last eval row's metrics, the mean
    training throughput, the last train loss, and the parameters from its config.json."""
    rows = read_jsonl(Path(run_dir) / METRICS)
    evals = [r for r in rows if "val_loss" in r]
    steps = [r for r in rows if "train_loss" in r]
    final: dict[str, Any] = {}
    if evals:
        last = evals[-1]
        keep = ("val_loss", "val_bpb", "train_eval_loss", "step", "tokens", "elapsed_s")
        final |= {k: last[k] for k in keep if k in last}
        final["train_time_s"] = last.get("train_time_s")
        final |= {k: v for k, v in last.items() if k.startswith("eval/")}
    if steps:
        final["train_loss"] = steps[-1]["train_loss"]
        rates = [r["tokens_per_s"] for r in steps if "tokens_per_s" in r]
        final["tokens_per_s"] = sum(rates) / len(rates) if rates else None
    params = _params(Path(run_dir) / "config.json")
    if params is not None:
        final["params"] = params
    return final


def _params(config_json: Path) -> int | None:
    """Parameter count of the model a run trained (its config.json holds the data's vocab)."""
    from gptlab.config import from_dict
    from gptlab.model.accounting import build_meta, count_params  # torch: only when needed
    from gptlab.model.config import ModelConfig

    if not config_json.is_file():
        return None
    try:
        model = from_dict(ModelConfig, json.loads(config_json.read_text())["model"])
    except (ValueError, KeyError, TypeError):
        return None
    return count_params(build_meta(model)).total


def metric_value(run_dir: Path, metric: str) -> tuple[float | None, str | None]:
    """(value, why it is missing) of `metric` for a finished run: the last eval row's value, or
    for time_to:KEY<=X the training seconds of the first eval that reached X (None, with a note,
    when none did)."""
    evals = [r for r in read_jsonl(Path(run_dir) / METRICS) if "val_loss" in r]
    target = parse_time_to(metric)
    if target is None:
        if not evals or metric not in evals[-1]:
            return None, f"the run's last evaluation logged no {metric}"
        return float(evals[-1][metric]), None
    key, op, x = target
    for row in evals:
        v = row.get(key)
        if v is not None and (v <= x if op == "<=" else v >= x):
            return float(row.get("train_time_s", row.get("elapsed_s"))), None
    return None, f"never reached {key} {op} {x:g}"
