"""Smoke test of a benchmark script: it runs on a tiny shape and its figures add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_cpu_step_breakdown_quick_adds_up():
    script = BENCHMARKS / "cpu_step_breakdown.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--steps", "2", "--repeats", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["quick"] and r["shape"]["n_layer"] == 2
    parts = r["linear_ms"] + r["attention_ms"] + r["gelu_ms"]
    assert abs(r["floor_ms"] - parts) < 0.2
    assert abs(r["rest_ms"] - (r["step_ms"] - parts)) < 0.2
    assert r["linear_best_orientation_ms"] <= r["linear_ms"] + 1e-6
    # the same FLOPs in less time: the floor's fraction of the peak is the larger
    assert 0 < r["step_fraction_of_bf16_peak_1024"] <= r["floor_fraction_of_bf16_peak_1024"]
    assert r["peak_1024_tflops"] > 0 and r["copy_gb_s"] > 0
