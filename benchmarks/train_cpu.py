"""Benchmark: `gptlab train --preset shakespeare_char_cpu` against nanoGPT's documented CPU recipe.

Both run through the real `gptlab train` command, one after the other in this process's
machine, so the ratio compares like with like. Each run prints one JSON line: whole-command wall
time, ms/step, tokens/s, peak RSS, final val loss, and the val-loss curve against wall time.
The last line holds the ratios. Usage:

    GPTLAB_DATA_DIR=../shared/data python benchmarks/train_cpu.py [--repeats 3] [--only ours]

nanoGPT's CPU recipe (its README): 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000
iterations, lr 1e-3 decaying to 1e-4 over 2000 iterations, no dropout, float32, no compile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = {
    "ours": ["--preset", "shakespeare_char_cpu"],
    "nanogpt_cpu": [
        "--preset", "gpt2-char", "--model.vocab_multiple", "1",
        "--model.n_layer", "4", "--model.n_head", "4", "--model.n_embd", "128",
        "--model.seq_len", "64", "--model.dropout", "0.0", "--model.no_bias",
        "--train.batch_size", "12", "--train.max_steps", "2000", "--train.eval_interval", "250",
        "--train.eval_steps", "20", "--train.log_interval", "100", "--train.dtype", "float32",
        "--optim.lr", "1e-3", "--optim.min_lr", "1e-4", "--optim.warmup_steps", "100",
        "--optim.beta2", "0.99", "--optim.weight_decay", "0.1",
    ],
}  # fmt: skip


def run_once(name: str, workdir: Path) -> dict:
    out_dir = workdir / f"{name}-{time.time_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "gptlab.cli.main",
        "train",
        *RECIPES[name],
        "--train.out_dir",
        str(out_dir),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in rows if "ms_per_step" in r]
    evals = [r for r in rows if "val_loss" in r]
    return {
        "recipe": name,
        "wall_s": round(wall, 2),
        "ms_per_step": round(statistics.median(r["ms_per_step"] for r in logs), 2),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in logs)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "final_val_loss": round(evals[-1]["val_loss"], 4),
        "val_curve": [
            [r["step"], round(r["elapsed_s"], 1), round(r["val_loss"], 4)] for r in evals
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=sorted(RECIPES), default=None)
    args = ap.parse_args()
    if "GPTLAB_DATA_DIR" not in os.environ:
        print("note: GPTLAB_DATA_DIR is not set; TinyShakespeare will be downloaded", flush=True)
    names = [args.only] if args.only else list(RECIPES)
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name in names:
                r = run_once(name, Path(tmp))
                results[name].append(r)
                print(json.dumps(r), flush=True)
    summary = {
        n: {
            "median_wall_s": statistics.median(r["wall_s"] for r in rs),
            "median_final_val_loss": statistics.median(r["final_val_loss"] for r in rs),
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
        }
        for n, rs in results.items()
    }
    if len(names) == 2:
        summary["wall_ratio_ours_over_nanogpt"] = round(
            summary["ours"]["median_wall_s"] / summary["nanogpt_cpu"]["median_wall_s"], 3
        )
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
