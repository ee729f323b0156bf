"""The scaling-sweep spec (YAML): what to sweep, what to hold out, how to fit.

    name: gutenberg-char
    base: {preset: shakespeare_char_cpu, overrides: {train.eval_steps: 20}}
    dataset: gutenberg                    # shortcut for data.dataset
    auto: {aspect_ratio: 32, head_dim: 32, ref_depth: 3}   # AutoConfig fields except depth
    depths: [1, 2, 3, 4]                  # sizes the law is fitted on
    holdout: 6                            # a larger size, trained too, predicted by the fit
    param_data_ratios: [8, 24]            # token budgets per size (tokens per parameter)
    seeds: [1]
    metric: val_loss                      # or val_bpb
    points: final                         # fit on final losses, or on every evaluation (evals)
    evals_per_run: 1

Why several ratios: with one tokens-per-parameter ratio D = r N, so N and D move together and
A / N^alpha + B / D^beta collapses to one power of N; the fit cannot tell them apart. Two or
more ratios per size (or evaluations along each run) give each N several D.

Every mistake is one line naming the field: a ConfigError before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

from gptlab.config import from_dict, load_file, merge
from gptlab.errors import ConfigError
from gptlab.presets import get_preset
from gptlab.scale.config import AutoConfig
from gptlab.train.config import RunConfig

METRICS = ("val_loss", "val_bpb")
POINTS = ("final", "evals")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleSpec:
    name: str
    base: RunConfig
    auto: AutoConfig  # depth 0: each size sets its own
    depths: tuple[int, ...]
    holdout: int
    param_data_ratios: tuple[float, ...] = (12.0,)
    seeds: tuple[int, ...] = (1,)
    metric: str = "val_loss"
    points: str = "final"
    evals_per_run: int = 1
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def all_depths(self) -> tuple[int, ...]:
        return (*self.depths, self.holdout)


FIELDS = {
    "name",
    "base",
    "dataset",
    "auto",
    "depths",
    "holdout",
    "param_data_ratios",
    "seeds",
    "metric",
    "points",
    "evals_per_run",
}


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'train.eval_steps': 20} -> {'train': {'eval_steps': 20}} (nested dicts pass through)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = str(key).split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"base.overrides: {key} sets a field inside a value")
        if isinstance(value, dict):
            node.setdefault(leaf, {}).update(_nest(value))
        else:
            node[leaf] = value
    return out


def _ints(raw: dict[str, Any], key: str, minimum: int) -> tuple[int, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of integers, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        raise ConfigError(f"{key} must hold integers >= {minimum}, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} {value} lists a value twice; list each once")
    return tuple(value)


def parse_spec(raw: dict[str, Any]) -> ScaleSpec:
    """Validate a spec mapping; ConfigError (one line naming the field) on any mistake."""
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(FIELDS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(sorted(FIELDS))}"
        raise ConfigError(f"unknown spec field {unknown[0]!r}; {hint}")
    name = raw.get("name", "scaling")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name must be a non-empty string, got {name!r}")

    base_raw = raw.get("base", {})
    if not isinstance(base_raw, dict) or set(base_raw) - {"preset", "overrides"}:
        raise ConfigError("base must be a mapping with preset: NAME and overrides: {field: value}")
    base = get_preset(base_raw.get("preset", "shakespeare_char_cpu"))
    overrides = base_raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"base.overrides must be a mapping of fields, got {overrides!r}")
    overrides = _nest(overrides)
    if "dataset" in raw:
        if not isinstance(raw["dataset"], str):
            raise ConfigError(f"dataset must be a dataset name or path, got {raw['dataset']!r}")
        overrides.setdefault("data", {})["dataset"] = raw["dataset"]
    try:
        base = merge(base, overrides)
    except ConfigError as e:
        raise ConfigError(f"base.overrides: {e}") from None

    auto_raw = raw.get("auto") or {}
    if not isinstance(auto_raw, dict):
        raise ConfigError(f"auto must be a mapping of AutoConfig fields, got {auto_raw!r}")
    for key in ("depth", "param_data_ratio", "flops"):
        if key in auto_raw:
            raise ConfigError(
                f"auto.{key} is set by the sweep (depths, param_data_ratios); remove it"
            )
    auto = from_dict(AutoConfig, auto_raw, prefix="auto.")

    depths = _ints(raw, "depths", 1)
    if len(depths) < 2:
        raise ConfigError(f"depths {list(depths)}: a scaling fit needs at least 2 sizes")
    holdout = raw.get("holdout")
    if isinstance(holdout, bool) or not isinstance(holdout, int):
        raise ConfigError(f"holdout must be one depth (an integer), got {holdout!r}")
    if holdout <= max(depths):
        raise ConfigError(
            f"holdout {holdout} must be larger than every fitted depth (max {max(depths)}): "
            "the check is an extrapolation"
        )
    ratios = raw.get("param_data_ratios", [12.0])
    if (
        not isinstance(ratios, list)
        or not ratios
        or any(isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0 for r in ratios)
    ):
        raise ConfigError(f"param_data_ratios must be a list of numbers > 0, got {ratios!r}")
    if len(set(ratios)) != len(ratios):
        raise ConfigError(f"param_data_ratios {ratios} lists a ratio twice")
    seeds = _ints(raw, "seeds", 0) if "seeds" in raw else (1,)
    metric = raw.get("metric", "val_loss")
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} must be one of {', '.join(METRICS)}")
    points = raw.get("points", "final")
    if points not in POINTS:
        raise ConfigError(f"points {points!r} must be final or evals")
    evals = raw.get("evals_per_run", 4 if points == "evals" else 1)
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise ConfigError(f"evals_per_run must be an integer >= 1, got {evals!r}")
    if len(ratios) == 1 and points == "final":
        raise ConfigError(
            "one param_data_ratio with points: final gives one D per N (D = r N), and the fit "
            "cannot separate A/N^alpha from B/D^beta; list two ratios or use points: evals"
        )
    n_points = len(depths) * len(ratios) * len(seeds) * (evals if points == "evals" else 1)
    if n_points < 5:
        raise ConfigError(
            f"the sweep gives {n_points} fit points, fewer than the law's 5 parameters; add "
            "depths, ratios or seeds"
        )
    return ScaleSpec(
        name=name,
        base=base,
        auto=auto,
        depths=depths,
        holdout=holdout,
        param_data_ratios=tuple(float(r) for r in ratios),
        seeds=seeds,
        metric=metric,
        points=points,
        evals_per_run=evals,
        raw=raw,
    )


def load_spec(path: str | Path) -> ScaleSpec:
    """Read and validate a YAML/JSON spec; errors name the file."""
    raw = load_file(path)
    try:
        return parse_spec(raw)
    except ConfigError as e:
        raise ConfigError(f"scale spec {path}: {e}") from None
