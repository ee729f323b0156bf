"""Benchmark: AdamW vs Muon, training time to val loss 1.88 on `--preset shakespeare_char_cpu`.

Each optimizer trains the preset (2 x 256, T 64, batch 32, 480 steps, cosine to lr / 10) once per
seed through the real `gptlab train` command, evaluating every 40 steps so the crossing of the
target is seen; evaluation time is excluded from `train_time_s`, as in architectures.py.

Muon settings for this preset (only the hidden matrices change optimizer; embeddings, head and
norms keep the preset's AdamW at lr 4e-3):
- muon_lr 0.01: updates of RMS 0.2 * 0.01 = 2e-3 per step, about what Keller Jordan's lr 0.02-0.05
  gives a 256-wide matrix under his scaling (0.02 / sqrt(256) = 1.25e-3 ... 3e-3); a 480-step run
  favours the upper half.
- momentum 0.85 -> 0.95 over the first 100 steps (~20% of the run, the share modded-nanogpt uses)
  rather than the default 300, which would be most of this short run.
- no weight decay, like the preset (its sweep found 0 beat 0.1 at this budget).

    GPTLAB_DATA_DIR=../shared/data python benchmarks/optimizers.py [--seeds 1337 1]
    GPTLAB_DATA_DIR=../shared/data python benchmarks/optimizers.py --quick   # smoke, about a minute

Output: one JSON line per run, then a summary line with the median time to target per optimizer
(and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PRESET = ["--preset", "shakespeare_char_cpu"]
EVALS = ["--train.eval_interval", "40", "--train.log_interval", "40"]
OPTIMIZERS = {
    "adamw": [],
    "muon": ["--optim.name", "muon", "--optim.muon_lr", "0.01",
             "--optim.muon_momentum_warmup_steps", "100"],
}  # fmt: skip
OPTIMIZERS["muon_compiled"] = [*OPTIMIZERS["muon"], "--train.compile_optimizer"]
QUICK = ["--train.max_steps", "20", "--train.eval_interval", "10", "--train.eval_steps", "2",
         "--train.log_interval", "5", "--optim.warmup_steps", "5"]  # fmt: skip


def train(args: list[str], out_dir: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "gptlab.cli.main", "train", *args, "--train.out_dir", str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]


def summarise(name: str, seed: int, rows: list[dict], target: float) -> dict:
    logs = [r for r in rows if "ms_per_step" in r][1:] or [r for r in rows if "ms_per_step" in r]
    evals = [r for r in rows if "val_loss" in r]
    hit = next((r for r in evals if r["val_loss"] <= target), None)
    return {
        "optimizer": name,
        "seed": seed,
        "steps": evals[-1]["step"],
        "ms_per_step": round(statistics.median(r["ms_per_step"] for r in logs), 1),
        "train_time_s": round(evals[-1]["train_time_s"], 1),
        "final_val_loss": round(evals[-1]["val_loss"], 4),
        "time_to_target_s": round(hit["train_time_s"], 1) if hit else None,
        "steps_to_target": hit["step"] if hit else None,
        "val_curve": [[r["step"], round(r["train_time_s"], 1), round(r["val_loss"], 4)]
                      for r in evals],
    }  # fmt: skip


def table(results: list[dict], target: float) -> str:
    lines = [
        f"| optimizer | ms/step | final val loss per seed | time to {target} (s) per seed |",
        "|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["optimizer"] for r in results):
        rs = [r for r in results if r["optimizer"] == name]
        vals = " / ".join(f"{r['final_val_loss']:.4f}" for r in rs)
        hits = " / ".join(str(r["time_to_target_s"]) for r in rs)
        ms = statistics.median(r["ms_per_step"] for r in rs)
        lines.append(f"| {name} | {ms:.1f} | {vals} | {hits} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=["adamw", "muon"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1])
    ap.add_argument("--target", type=float, default=1.88)
    ap.add_argument("--quick", action="store_true", help="20 steps, one seed: a smoke test")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags for every run")
    a = ap.parse_args()
    seeds = a.seeds[:1] if a.quick else a.seeds
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.optimizers:
            for seed in seeds:
                args = [*PRESET, *EVALS, *(QUICK if a.quick else []), *OPTIMIZERS[name], *a.extra,
                        "--train.seed", str(seed)]  # fmt: skip
                rows = train(args, Path(tmp) / f"{name}-{seed}")
                results.append(summarise(name, seed, rows, a.target))
                print(json.dumps(results[-1]), flush=True)
    median = {}
    for name in a.optimizers:
        hits = [r["time_to_target_s"] for r in results if r["optimizer"] == name]
        median[name] = statistics.median(hits) if None not in hits else None
    summary = {"target": a.target, "quick": a.quick, "median_time_to_target_s": median}
    print(json.dumps({"summary": summary}))
    print(table(results, a.target), file=sys.stderr)


if __name__ == "__main__":
    main()
