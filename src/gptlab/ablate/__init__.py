"""The ablation lab: a spec of named variants x seeds (spec.py), run as separate training
processes (runner.py), compared with confidence intervals and significance tests (stats.py) in a
report with plots (report.py).

    import gptlab.ablate
    records = gptlab.ablate.run("examples/ablations/positions_x_optimizer.yaml", out="lab/pxo")
    summary = gptlab.ablate.report("lab/pxo")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# The submodule first: importing gptlab.ablate.report later would otherwise replace the
# report() function below with the module of the same name.
from gptlab.ablate import report as _report_module


def run(
    spec: Any,
    out: str | Path | None = None,
    *,
    parallel: int = 1,
    launcher: str = "local",
    force: bool = False,
    gpus: int = 0,
    on_progress: Callable[[str], None] | None = None,
    write_report: bool = True,
    launch: Callable[[list[str], Path], Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the ablation `spec` (an AblationSpec, a path to its YAML, or its dict) into `out`
    (default: ablations/<name>), skipping finished runs; writes the report; returns the records."""
    from gptlab.ablate.runner import check_out_dir, execute
    from gptlab.ablate.spec import SPEC_FILE, load_spec, plan

    spec = load_spec(spec)
    out = Path(out) if out is not None else Path("ablations") / spec.name
    check_out_dir(out, spec.raw, force, SPEC_FILE)
    records = execute(
        plan(spec, out),
        out,
        metric=spec.metric,
        parallel=parallel,
        launcher=launcher,
        on_progress=on_progress,
        gpus=gpus,
        launch=launch,
    )
    if write_report:
        report(out)
    return records


def report(out: str | Path) -> dict[str, Any]:
    """Build report.md, report.html (plots embedded) and summary.json in `out` from its
    results.jsonl and the runs' metrics, without training; returns the summary."""
    return _report_module.build_report(Path(out))
