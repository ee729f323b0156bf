"""Benchmark: training tokens/s with and without torch.compile on `--preset shakespeare_char_cpu`.

Three variants run the same preset through the real `gptlab train` command, one after another:
eager, `--train.compile` (the whole model) and `--train.compile --train.compile_scope blocks`.
Tokens/s is the median of the log windows after the first (which holds the compilation); the
first window's extra time is reported as the compile cost.

    GPTLAB_DATA_DIR=../shared/data python benchmarks/compile_speed.py [--steps 120]
    GPTLAB_DATA_DIR=../shared/data python benchmarks/compile_speed.py --quick   # smoke

Output: one JSON line per variant, then a summary line with each variant's tokens/s as a ratio
to eager (and a Markdown table on stderr).
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

PRESET = ["--preset", "shakespeare_char_cpu", "--train.eval_steps", "1"]
VARIANTS = {
    "eager": [],
    "compile_model": ["--train.compile"],
    "compile_blocks": ["--train.compile", "--train.compile_scope", "blocks"],
}


def run(name: str, steps: int, log_every: int, workdir: Path) -> dict:
    out_dir = workdir / name
    cmd = [sys.executable, "-m", "gptlab.cli.main", "train", *PRESET, *VARIANTS[name],
           "--train.max_steps", str(steps), "--train.log_interval", str(log_every),
           "--train.eval_interval", str(steps), "--train.out_dir", str(out_dir)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in rows if "tokens_per_s" in r]
    steady = logs[1:] or logs
    ms = statistics.median(r["ms_per_step"] for r in steady)
    return {
        "variant": name,
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
        "ms_per_step": round(ms, 2),
        "compile_cost_s": round((logs[0]["ms_per_step"] - ms) * log_every / 1e3, 1),
        "wall_s": round(wall, 1),
        "final_train_loss": round(logs[-1]["train_loss"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--quick", action="store_true", help="30 steps: a smoke test")
    a = ap.parse_args()
    steps = 30 if a.quick else a.steps
    log_every = 10
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.variants:
            results.append(run(name, steps, log_every, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    eager = next((r["tokens_per_s"] for r in results if r["variant"] == "eager"), None)
    ratios = {r["variant"]: round(r["tokens_per_s"] / eager, 3) for r in results} if eager else {}
    print(json.dumps({"summary": {"tokens_per_s_vs_eager": ratios, "quick": a.quick}}))
    lines = [
        "| variant | tokens/s | ms/step | vs eager | compile cost (s) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ratio = ratios.get(r["variant"], float("nan"))
        lines.append(
            f"| {r['variant']} | {r['tokens_per_s']} | {r['ms_per_step']} | {ratio:.2f}x | "
            f"{r['compile_cost_s']} |"
        )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
