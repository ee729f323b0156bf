"""Benchmark: GPT-2-style vs LLaMA-style vs `modern` on Shakespeare char, CPU, equal budgets.

The three presets (`gpt2-char`, `llama`, `modern`) share width, depth, context, batch and
optimizer settings and have about the same parameter count (1.62M-1.64M); only the
architecture differs. Each recipe is first timed for a few steps, then trained for as many
steps as fit in the same wall-clock budget (the cosine schedule spans exactly that run), once
per seed, through the real `gptlab train` command. Reported per run: parameters, ms/step,
tokens/s, final val loss, and the training time (evaluation excluded) at which val loss first
reached the target. `moe` mode compares a dense recipe with its MoE version at equal active
parameters (4 experts of the same width, top-1) over the same number of steps.

    GPTLAB_DATA_DIR=../shared/data python benchmarks/architectures.py --budget 90 --seeds 1337 1
    GPTLAB_DATA_DIR=../shared/data python benchmarks/architectures.py moe --base modern

Output: one JSON line per run, then a summary line (and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = ["gpt2-char", "llama", "modern"]
MOE = ["--model.moe.n_experts", "4", "--model.moe.top_k", "1"]


def train(args: list[str], out_dir: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "gptlab.cli.main", "train", *args, "--train.out_dir", str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]


def params_of(args: list[str]) -> float:
    cmd = [sys.executable, "-m", "gptlab.cli.main", "info", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("parameters"))
    return float(line.split("(")[1].split("M")[0])


def summarise(name: str, seed: int, rows: list[dict], target: float, params: float) -> dict:
    logs = [r for r in rows if "ms_per_step" in r][1:]  # the first interval includes warm-up
    evals = [r for r in rows if "val_loss" in r]
    hit = next((r for r in evals if r["val_loss"] <= target), None)
    return {
        "recipe": name,
        "seed": seed,
        "params_m": params,
        "steps": evals[-1]["step"],
        "ms_per_step": round(statistics.median(r["ms_per_step"] for r in logs), 1),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in logs)),
        "train_time_s": round(evals[-1]["train_time_s"], 1),
        "final_val_loss": round(evals[-1]["val_loss"], 4),
        f"time_to_{target}_s": round(hit["train_time_s"], 1) if hit else None,
        "val_curve": [
            [r["step"], round(r["train_time_s"], 1), round(r["val_loss"], 4)] for r in evals
        ],  # fmt: skip
    }


def calibrate(args: list[str], tmp: Path) -> float:
    """Median ms per optimizer step of a recipe (a short run; the first interval is dropped)."""
    short = ["--train.max_steps", "80", "--train.eval_interval", "80", "--train.eval_steps", "1",
             "--train.log_interval", "20", "--optim.warmup_steps", "10"]  # fmt: skip
    rows = train(args + short, tmp / f"calib-{time.time_ns()}")
    return statistics.median([r["ms_per_step"] for r in rows if "ms_per_step" in r][1:])


def recipes_mode(a: argparse.Namespace, tmp: Path) -> list[dict]:
    results = []
    for name in a.recipes:
        base = ["--preset", name, *a.extra]
        ms = calibrate(base, tmp)
        steps = int(a.budget * 1000 / ms)
        plan = ["--train.max_steps", str(steps), "--train.eval_interval", str(max(1, steps // 12)),
                "--train.log_interval", str(max(1, steps // 12))]  # fmt: skip
        params = params_of(base)
        for seed in a.seeds:
            rows = train(base + plan + ["--train.seed", str(seed)], tmp / f"{name}-{seed}")
            results.append(summarise(name, seed, rows, a.target, params))
            print(json.dumps(results[-1]), flush=True)
    return results


def moe_mode(a: argparse.Namespace, tmp: Path) -> list[dict]:
    results = []
    for name, extra in ((f"{a.base} dense", []), (f"{a.base} + MoE 4x top-1", MOE)):
        base = ["--preset", a.base, *extra, *a.extra, "--train.eval_interval", "120"]
        params = params_of(base)
        for seed in a.seeds:
            rows = train(base + ["--train.seed", str(seed)], tmp / f"{len(results)}-{seed}")
            results.append(summarise(name, seed, rows, a.target, params))
            print(json.dumps(results[-1]), flush=True)
    return results


def table(results: list[dict], target: float) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["recipe"], []).append(r)
    lines = [
        f"| recipe | params | steps | ms/step | tok/s | val loss per seed | time to {target} (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in by.items():
        vals = " / ".join(f"{r['final_val_loss']:.4f}" for r in rs)
        hits = " / ".join(str(r[f"time_to_{target}_s"]) for r in rs)
        lines.append(
            f"| {name} | {rs[0]['params_m']:.2f}M | {rs[0]['steps']} | "
            f"{statistics.median(r['ms_per_step'] for r in rs):.1f} | "
            f"{statistics.median(r['tokens_per_s'] for r in rs):.0f} | {vals} | {hits} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", choices=["recipes", "moe"], default="recipes")
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--base", default="modern", help="dense recipe for moe mode")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of training per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1])
    ap.add_argument("--target", type=float, default=1.88)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags for every run")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = recipes_mode if a.mode == "recipes" else moe_mode
        results = run(a, Path(tmp))
    print(json.dumps({"summary": {"mode": a.mode, "budget_s": a.budget, "runs": len(results)}}))
    print(table(results, a.target), file=sys.stderr)


if __name__ == "__main__":
    main()
