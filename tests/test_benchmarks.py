"""Smoke test of a benchmark script: it runs on a tiny shape and its figures add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
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
    # structure and arithmetic only, never one timing against another (a shared, noisy machine)
    # the best orientation reuses the same measurements and takes a min: never above as run
    assert r["linear_best_orientation_ms"] <= r["linear_ms"] + 1e-6
    # fraction = FLOPs / time / peak: the same FLOPs, so fraction x time is one constant, up to
    # the rounding of the printed figures (fractions to 0.001, times to 0.1 ms)
    step_frac, floor_frac = (
        r["step_fraction_of_bf16_peak_1024"],
        r["floor_fraction_of_bf16_peak_1024"],
    )
    step_product, floor_product = step_frac * r["step_ms"], floor_frac * r["floor_ms"]
    assert step_product > 0 and floor_product > 0
    rounding = 0.0005 * (r["step_ms"] + r["floor_ms"]) + 0.05 * (step_frac + floor_frac)
    assert abs(step_product - floor_product) <= rounding
    assert abs(0.6 * r["step_ms_for_60_percent"] - step_product) <= rounding + 0.03
    assert r["peak_1024_tflops"] > 0 and r["copy_gb_s"] > 0
