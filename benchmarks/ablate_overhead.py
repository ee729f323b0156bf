"""Benchmark: the ablation runner's own cost per run, as a fraction of a 60-second run.

Runs a small ablation (shakespeare_char_cpu, one variant, --runs seeds) through
gptlab.ablate.runner.execute with a wall-time budget of --seconds, then splits each run's wall
time as the runner saw it into
  - start-up: process start, imports, config, lock (wall_s - the child's elapsed_s),
  - in-training overhead: data open (the prepared shards are reused after the first run),
    model build, the final evaluation and checkpoint (elapsed_s - train_time_s),
  - training: train_time_s (the budget itself).
The runner's overhead is start-up plus data open and model build; evaluation is work the run
asked for, so it is reported apart. Fractions are of a 60-second run (--budget_s). The target
is below 5%. Training length does not change the start-up cost, so short runs measure it.

    GPTLAB_DATA_DIR=../shared/data python benchmarks/ablate_overhead.py --runs 3 --seconds 5

Output: one JSON line per run, then a summary JSON line (the CPU model is printed first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from gptlab.ablate.runner import cpu_model, execute
from gptlab.ablate.spec import parse_spec, plan
from gptlab.cli.launch import forked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs (seeds) to time")
    ap.add_argument("--seconds", type=float, default=5.0, help="training budget of each run")
    ap.add_argument("--budget_s", type=float, default=60.0, help="the run length to compare to")
    ap.add_argument("--preset", default="shakespeare_char_cpu")
    ap.add_argument("--out", default="", help="ablation folder (default: a temporary one)")
    args = ap.parse_args()
    print(f"cpu: {cpu_model()}", flush=True)
    spec = parse_spec(
        {
            "name": "overhead",
            "base": {"preset": args.preset, "overrides": {"train.eval_interval": 1_000_000}},
            "variants": {"base": {}},
            "seeds": list(range(1, args.runs + 1)),
            "budget": {"wall_seconds": args.seconds},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        records = execute(plan(spec, out), out, metric="val_loss", launch=forked)
    rows = []
    for r in records:
        if r["status"] != "done":
            raise SystemExit(f"run seed {r['seed']} failed: {r.get('error')}")
        f = r["final"]
        startup = r["wall_s"] - f["elapsed_s"]
        in_train = f["elapsed_s"] - f["train_time_s"]
        row = {
            "seed": r["seed"],
            "wall_s": round(r["wall_s"], 2),
            "startup_s": round(startup, 2),
            "in_training_overhead_s": round(in_train, 2),
            "train_time_s": round(f["train_time_s"], 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    later = rows[1:] or rows  # the first run may also prepare the data
    startup = statistics.median(x["startup_s"] for x in later)
    in_train = statistics.median(x["in_training_overhead_s"] for x in later)
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "runs": len(rows),
                "train_seconds_each": args.seconds,
                "median_startup_s": startup,
                "median_in_training_overhead_s": in_train,
                "first_run_startup_s": rows[0]["startup_s"],
                "startup_fraction_of_run": round(startup / args.budget_s, 4),
                "overhead_fraction_incl_final_eval": round((startup + in_train) / args.budget_s, 4),
                "budget_s": args.budget_s,
                "target_fraction": 0.05,
            }
        )
    )


if __name__ == "__main__":
    main()
