"""Scaling: one size dial -> a full config (auto.py), sweeps over it (sweep.py), and the
Chinchilla fit L(N, D) = E + A/N^alpha + B/D^beta with its compute-optimal frontier (fit.py).

    import gptlab.scale
    summary = gptlab.scale.run("examples/scaling/gutenberg_char.yaml", out="runs/scale")
    result = gptlab.scale.fit([(n, d, loss), ...])       # or a sweep's records

`gptlab.scale.fit` is the fitting function (it shadows the submodule of the same name as an
attribute; import its helpers with `from gptlab.scale.fit import Law`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptlab.scale.fit import fit


def run(
    spec: Any,
    out: str | Path,
    *,
    parallel: int = 1,
    launcher: str = "local",
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
    launch: Callable[[list[str], Path], Any] | None = None,
) -> dict[str, Any]:
    """Train the sweep `spec` (a ScaleSpec, a path to its YAML, or its dict) into `out`,
    skipping finished runs, then fit and write the report; returns the summary."""
    from gptlab.scale.report import build_report
    from gptlab.scale.spec import ScaleSpec, load_spec, parse_spec
    from gptlab.scale.sweep import run as run_sweep

    if not isinstance(spec, ScaleSpec):
        spec = parse_spec(spec) if isinstance(spec, dict) else load_spec(spec)
    out = Path(out)
    records = run_sweep(
        spec,
        out,
        parallel=parallel,
        launcher=launcher,
        force=force,
        on_progress=on_progress,
        launch=launch,
    )
    return build_report(spec, out, records)


__all__ = ["fit", "run"]
