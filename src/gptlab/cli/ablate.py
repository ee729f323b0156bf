"""`gptlab ablate SPEC.yaml --out DIR`: run every (variant, seed) of an ablation spec as its own
training process, then write the report; `--dry-run` prints the plan, `--report DIR` rebuilds
the report from DIR/results.jsonl without training. docs/ablations.md explains the spec."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab.cli.common import UsageError, parse, setup_logging
from gptlab.cli.launch import forked


@dataclasses.dataclass(frozen=True, kw_only=True)
class AblateArgs:
    """Run an ablation (variants x seeds) and report means, CIs, significance and plots."""

    spec: Annotated[str, tyro.conf.Positional] = ""
    """The ablation spec (YAML or JSON), e.g. examples/ablations/positions_x_optimizer.yaml."""
    out: str = ""
    """Output folder (default: ablations/<spec name>): runs/, results.jsonl and the report."""
    parallel: int = 1
    """Runs at once (on a machine with several GPUs each gets its own)."""
    launcher: Literal["local", "submitit"] = "local"
    """local subprocesses, or submitit (SLURM on a cluster; pip install 'gptlab[cluster]')."""
    dry_run: bool = False
    """Print the plan (runs, estimated steps, FLOPs and time) and exit."""
    force: bool = False
    """Run in an --out folder that holds another spec's results."""
    report: str = ""
    """Rebuild the report of this ablation folder from its results.jsonl, without training."""


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def _dry_run(spec, out: Path) -> None:
    import torch

    from gptlab.ablate.spec import estimate, plan
    from gptlab.train.health import measured_matmul_peak

    mfu = 0.25  # what the CPU presets reach (docs/quickstart.md); a rough guide only
    dtype = torch.bfloat16 if spec.variants[0].config.train.dtype != "float32" else torch.float32
    flops_per_s = measured_matmul_peak("cpu", dtype) * mfu
    runs = plan(spec, out)
    print(
        f"ablation {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds = "
        f"{len(runs)} runs into {out}, metric {spec.metric}, baseline {spec.baseline}"
    )
    print(f"{'variant':<28} {'seed':>4} {'steps':>9} {'tokens':>13} {'FLOPs':>9} {'time':>9}")
    total_s = total_flops = 0.0
    for p in runs:
        e = estimate(p, flops_per_s)
        total_s += e["seconds"] or 0.0
        total_flops += e["flops"] or 0.0
        steps = "?" if e["steps"] is None else f"{e['steps']:,}"
        tokens = "?" if e["tokens"] is None else f"{e['tokens']:,}"
        flops = "?" if e["flops"] is None else f"{e['flops']:.2e}"
        print(f"{p.variant:<28} {p.seed:>4} {steps:>9} {tokens:>13} {flops:>9} "
              f"{_fmt_s(e['seconds']):>9}")  # fmt: skip
    print(
        f"total {total_flops:.3g} training FLOPs, about {_fmt_s(total_s)} of training plus "
        f"start-up and evaluation (estimates assume {mfu:.0%} of this CPU's measured "
        f"{flops_per_s / mfu / 1e9:.0f} GFLOP/s matmul peak; a wall-time budget is exact)"
    )


def run(argv: list[str]) -> int:
    args = parse(AblateArgs, argv, prog="gptlab ablate")
    setup_logging()
    import gptlab.ablate
    from gptlab.ablate.spec import load_spec

    if args.report:
        if args.spec:
            raise UsageError("give either SPEC (to run) or --report DIR (to rebuild), not both")
        gptlab.ablate.report(args.report)
        print(f"report: {Path(args.report) / 'report.md'} and report.html")
        return 0
    if not args.spec:
        raise UsageError("give an ablation spec (gptlab ablate SPEC.yaml) or --report DIR")
    if args.parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {args.parallel}")
    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else Path("ablations") / spec.name
    if args.dry_run:
        _dry_run(spec, out)
        return 0
    gpus = 0
    if args.parallel > 1:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0

    def progress(line: str) -> None:
        print(f"[ablate] {line}", flush=True)

    records = gptlab.ablate.run(
        spec,
        out,
        parallel=args.parallel,
        launcher=args.launcher,
        force=args.force,
        gpus=gpus,
        on_progress=progress,
        launch=forked,
    )
    failed = [r for r in records if r["status"] != "done"]
    print(f"report: {out / 'report.md'} and report.html ({len(failed)} of {len(records)} failed)")
    for r in failed:
        print(f"  failed: {r['variant']} seed {r['seed']}: {r.get('error', '')}", file=sys.stderr)
    return 1 if failed else 0
