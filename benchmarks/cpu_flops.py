"""Benchmark: achieved FLOP/s of a CPU training step at the `shakespeare_char` shape, as a fraction
of the measured matmul peak.

The shape is nanoGPT's shakespeare_char (6 layers, 6 heads, 384 wide, context 256, batch 64).
Dropout is off by default (`--dropout 0.2` puts the preset's back): it is no matmul work, and on a
CPU drawing its random masks costs more than a third of the step. Each variant trains a few
steps through the real `gptlab train` command on the CPU;
the step time is the median `ms_per_step` of the steps after the first two (compilation and
warm-up excluded). Achieved FLOP/s = FLOPs per token (model/accounting.py: 6 x parameters plus
attention) x tokens per step / step time.

Two peaks are measured here, in this process, for each dtype: `peak_1024`, the best FLOP/s of a
1024 x 1024 matmul (what the training loop's MFU column divides by), and `peak_best`, the best
over sides 1024, 2048 and 4096 (the most this CPU's matmul reaches). Each variant reports its
achieved FLOP/s as a fraction of both bf16 peaks, whatever dtype it computes in, and of its own
dtype's best peak.

    GPTLAB_DATA_DIR=../shared/data python benchmarks/cpu_flops.py [--variants fp32 bf16 ...]
    GPTLAB_DATA_DIR=../shared/data python benchmarks/cpu_flops.py --quick   # smoke, 2 layers

Output: one JSON line per variant, then a summary line (and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.model.accounting import flops_per_token
from gptlab.presets import shakespeare_char

SHAPE = ["--preset", "shakespeare_char", "--train.device", "cpu", "--train.eval_steps", "1",
         "--train.log_interval", "1", "--train.eval_interval", "1000"]  # fmt: skip
VARIANTS = {
    "fp32": ["--train.dtype", "float32"],  # nanoGPT's CPU step: fp32, eager
    "bf16": ["--train.dtype", "bfloat16"],  # plain bf16 autocast
    "bf16_compile": ["--train.dtype", "bfloat16", "--train.compile"],
    "bf16_compile_blocks": ["--train.dtype", "bfloat16", "--train.compile",
                            "--train.compile_scope", "blocks"],
}  # fmt: skip


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048, 4096), seconds: float = 1.0) -> float:
    """Best FLOP/s over square matmuls of the given sides."""
    best = 0.0
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        a @ b
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def run(name: str, steps: int, extra: list[str], workdir: Path) -> dict:
    out_dir = workdir / name
    cmd = [sys.executable, "-m", "gptlab.cli.main", "train", *SHAPE, *VARIANTS[name], *extra,
           "--train.max_steps", str(steps), "--optim.warmup_steps", "1",
           "--train.out_dir", str(out_dir)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in rows if "ms_per_step" in r]
    steady = logs[2:] or logs
    return {
        "variant": name,
        "ms_per_step": statistics.median(r["ms_per_step"] for r in steady),
        "first_step_ms": logs[0]["ms_per_step"],
        "tokens_per_step": round(logs[-1]["tokens_per_s"] * logs[-1]["ms_per_step"] / 1e3),
        "loop_mfu": statistics.median(r["mfu"] for r in steady),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.0, help="the preset's is 0.2")
    ap.add_argument("--quick", action="store_true", help="2 layers, 4 steps: a smoke test")
    a = ap.parse_args()
    extra = ["--model.dropout", str(a.dropout)] + (["--model.n_layer", "2"] if a.quick else [])
    steps = 4 if a.quick else a.steps
    cfg = dataclasses.replace(shakespeare_char().model, vocab_size=65)  # the char vocabulary
    if a.quick:
        cfg = dataclasses.replace(cfg, n_layer=2)
    fpt = flops_per_token(cfg)
    peaks = {
        "bf16_1024": matmul_peak(torch.bfloat16, sizes=(1024,)),
        "bf16": matmul_peak(torch.bfloat16),
        "fp32": matmul_peak(torch.float32),
    }
    print(json.dumps({"peak_tflops": {k: round(v / 1e12, 3) for k, v in peaks.items()},
                      "flops_per_token": fpt, "dropout": a.dropout}), flush=True)  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.variants:
            r = run(name, steps, extra, Path(tmp))
            achieved = fpt * r["tokens_per_step"] / (r["ms_per_step"] / 1e3)
            own = peaks["fp32" if name == "fp32" else "bf16"]
            r |= {
                "achieved_tflops": round(achieved / 1e12, 3),
                "fraction_of_bf16_peak_1024": round(achieved / peaks["bf16_1024"], 3),
                "fraction_of_bf16_peak": round(achieved / peaks["bf16"], 3),
                "fraction_of_own_dtype_peak": round(achieved / own, 3),
            }
            results.append(r)
            print(json.dumps(r), flush=True)
    best = max(results, key=lambda r: r["fraction_of_bf16_peak"])
    print(json.dumps({"summary": {"best_variant": best["variant"],
                                  "best_fraction_of_bf16_peak_1024":
                                      best["fraction_of_bf16_peak_1024"],
                                  "best_fraction_of_bf16_peak": best["fraction_of_bf16_peak"],
                                  "target": 0.60, "dropout": a.dropout,
                                  "quick": a.quick}}))  # fmt: skip
    lines = [
        "| variant | ms/step | TFLOP/s | of bf16 peak_1024 | of bf16 peak_best | of own dtype |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        p1024, bf16 = r["fraction_of_bf16_peak_1024"], r["fraction_of_bf16_peak"]
        own = r["fraction_of_own_dtype_peak"]
        lines.append(
            f"| {r['variant']} | {r['ms_per_step']:.0f} | {r['achieved_tflops']:.3f} | "
            f"{100 * p1024:.0f} % | {100 * bf16:.0f} % | {100 * own:.0f} % |"
        )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
