"""`gptlab scale SPEC.yaml --out DIR`: train a size sweep, fit L(N, D), check the held-out size.

gptlab scale examples/scaling/gutenberg_char.yaml --out runs/scale     train, fit, report
gptlab scale SPEC --out DIR --dry-run                                   the plan only
gptlab scale SPEC --out DIR --report                                    re-fit, no training

Rerunning skips finished runs and resumes interrupted ones (the ablation runner's results.jsonl).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab.cli.common import parse, setup_logging
from gptlab.cli.launch import forked


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleArgs:
    """Sweep model size with one dial, fit a scaling law and check it on a held-out size."""

    spec: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SPEC")]
    """The sweep spec (YAML or JSON): base, auto settings, depths, holdout, ratios, seeds."""
    out: str
    """Sweep folder: runs/, results.jsonl, report.md, scaling.png, summary.json."""
    parallel: int = 1
    """Runs trained at once (each its own process; one GPU each where there are several)."""
    launcher: Literal["local", "submitit"] = "local"
    """local subprocesses, or SLURM through submitit (pip install 'gptlab[cluster]')."""
    dry_run: bool = False
    """Print the plan (shapes, tokens, steps, FLOPs) and stop."""
    report: bool = False
    """Rebuild the fit and report from the folder's results without training."""
    force: bool = False
    """Use an --out folder that holds a different spec's sweep."""


def run(argv: list[str]) -> int:
    from gptlab.errors import ConfigError
    from gptlab.scale import report as report_mod
    from gptlab.scale import sweep
    from gptlab.scale.spec import load_spec

    args = parse(ScaleArgs, argv, prog="gptlab scale")
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    setup_logging()
    spec, out = load_spec(args.spec), Path(args.out)
    if args.dry_run:
        print("\n".join(sweep.plan_table(sweep.plan(spec, out))))
        return 0
    if args.report:
        if not (out / "results.jsonl").is_file():
            raise ConfigError(
                f"{out} holds no results.jsonl; run the sweep first (without --report)"
            )
        from gptlab.ablate.runner import check_out_dir, read_results

        check_out_dir(out, spec.raw, args.force, sweep.SPEC_FILE)
        records = read_results(out)
    else:
        print("\n".join(sweep.plan_table(sweep.plan(spec, out))), flush=True)

        def progress(line: str) -> None:
            print(line, file=sys.stdout, flush=True)

        records = sweep.run(
            spec,
            out,
            parallel=args.parallel,
            launcher=args.launcher,
            force=args.force,
            on_progress=progress,
            launch=forked,
        )
    summary = report_mod.build_report(spec, out, records)
    for row in summary["holdout"]:
        if "error" in row:
            print(
                f"held out {row['variant']}: predicted {spec.metric} {row['predicted']:.4f}, "
                f"actual {row['actual']:.4f} ({100 * row['error']:+.2f} %)"
            )
    if "fit" in summary:
        p = summary["fit"]["params"]
        print(
            f"fit: E {p['E']:.4f}, A {p['A']:.4g}, alpha {p['alpha']:.3f}, B {p['B']:.4g}, "
            f"beta {p['beta']:.3f} ({summary['params_convention']} parameters)"
        )
    else:
        print(f"no fit: {summary['fit_error']}")
    print(f"report: {out / report_mod.REPORT}")
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    return 1 if failed or "fit" not in summary else 0
