"""A scaling sweep: every (depth, token budget, seed) of a spec as its own training run, through
the ablation runner (gptlab.ablate.runner: separate processes, resumable, results.jsonl).

Each size's config is derived from the spec's base by the auto-configuration rules
(scale/auto.py), so batch, learning rate and horizon move with the size as they would in
`gptlab train --auto.depth D`. The fit points are read from each run's metrics.jsonl: the last
evaluation (points: final) or every evaluation (points: evals).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptlab.ablate.runner import PlannedRun, check_out_dir, execute
from gptlab.config import to_dict
from gptlab.scale.auto import derive
from gptlab.scale.spec import ScaleSpec
from gptlab.train.config import RunConfig

log = logging.getLogger(__name__)

SPEC_FILE = "scale_spec.json"  # the spec a sweep folder belongs to
METRICS_FILE = "metrics.jsonl"  # written by training in each run directory


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizeRun:
    variant: str  # d{depth}-r{ratio}
    seed: int
    depth: int
    ratio: float
    params: int  # N under the spec's convention
    tokens: int  # planned training tokens
    flops: float
    holdout: bool
    convention: str  # how params was counted
    config: RunConfig
    run_dir: Path

    def info(self) -> dict[str, Any]:
        """The `scale` field of this run's results.jsonl record."""
        return {
            "depth": self.depth,
            "ratio": self.ratio,
            "params": self.params,
            "params_convention": self.convention,
            "tokens_planned": self.tokens,
            "flops": self.flops,
            "holdout": self.holdout,
        }


def variant_name(depth: int, ratio: float) -> str:
    return f"d{depth}-r{ratio:g}"


def plan(spec: ScaleSpec, out: Path) -> list[SizeRun]:
    """Every run of the sweep, smallest first (the held-out size last)."""
    runs = []
    for depth in spec.all_depths:
        for ratio in spec.param_data_ratios:
            auto = dataclasses.replace(spec.auto, depth=depth, param_data_ratio=ratio)
            derivation = derive(spec.base, auto)
            cfg = derivation.config
            steps = cfg.train.max_steps
            interval = max(1, math.ceil(steps / spec.evals_per_run))
            name = variant_name(depth, ratio)
            for seed in spec.seeds:
                run_dir = out / "runs" / name / f"seed{seed}"
                train = dataclasses.replace(
                    cfg.train, seed=seed, out_dir=str(run_dir), eval_interval=interval
                )
                runs.append(
                    SizeRun(
                        variant=name,
                        seed=seed,
                        depth=depth,
                        ratio=ratio,
                        params=derivation.params,
                        tokens=derivation.tokens,
                        flops=derivation.flops,
                        holdout=depth == spec.holdout,
                        config=dataclasses.replace(cfg, train=train),
                        run_dir=run_dir,
                        convention=spec.auto.params,
                    )
                )
    return runs


def run(
    spec: ScaleSpec,
    out: Path,
    *,
    parallel: int = 1,
    launcher: str = "local",
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
    launch: Callable[[list[str], Path], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train every size of `spec` (skipping finished runs) and return their records."""
    check_out_dir(out, spec.raw, force, SPEC_FILE)
    runs = plan(spec, out)
    info = {(r.variant, r.seed): r.info() for r in runs}
    planned = [
        PlannedRun(variant=r.variant, seed=r.seed, config=r.config, run_dir=r.run_dir) for r in runs
    ]
    return execute(
        planned,
        out,
        metric=spec.metric,
        parallel=parallel,
        launcher=launcher,
        on_progress=on_progress,
        extra_record=lambda p: {"scale": info[(p.variant, p.seed)]},
        launch=launch,
    )


def eval_rows(run_dir: Path, metric: str) -> list[dict[str, Any]]:
    """The evaluation rows (with `metric` and tokens) of a run's metrics.jsonl, in order; a
    row cut off mid-write (a killed run) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and metric in row and "tokens" in row:
            rows.append(row)
    return rows


def measured_points(spec: ScaleSpec, runs: list[SizeRun], done: set[tuple[str, int]]) -> list:
    """(run, N, D, L) for each fit point of the finished runs (the held-out size included)."""
    out = []
    for r in runs:
        if (r.variant, r.seed) not in done:
            continue
        rows = eval_rows(r.run_dir, spec.metric)
        if not rows:
            continue
        chosen = rows if spec.points == "evals" and not r.holdout else rows[-1:]
        for row in chosen:
            if row["tokens"] > 0:
                out.append((r, float(r.params), float(row["tokens"]), float(row[spec.metric])))
    return out


def plan_table(runs: list[SizeRun]) -> list[str]:
    """The --dry-run lines: one per run with its shape, tokens, steps and FLOPs."""
    lines = [
        f"{'run':<14} {'seed':>4} {'shape':>12} {'N':>10} {'tokens':>12} {'steps':>6} {'FLOPs':>9}"
    ]
    for r in runs:
        m, t = r.config.model, r.config.train
        shape = f"{m.n_layer}x{m.n_embd}/{m.n_head}h"
        tag = "  (held out)" if r.holdout else ""
        lines.append(
            f"{r.variant:<14} {r.seed:>4} {shape:>12} {r.params:>10,} {r.tokens:>12,} "
            f"{t.max_steps:>6} {r.flops:>9.2e}{tag}"
        )
    total = sum(r.flops for r in runs)
    lines.append(f"{len(runs)} runs, {total:.3g} training FLOPs in all")
    return lines


def config_dicts(runs: list[SizeRun]) -> dict[str, dict[str, Any]]:
    """Resolved configs by variant (for the report's appendix)."""
    return {r.variant: to_dict(r.config) for r in runs}
