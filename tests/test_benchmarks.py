"""Smoke test of a benchmark script: it runs on a tiny shape and its figures add up."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import needs_shakespeare

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


# --- benchmarks/gpu_check.sh: what can be checked without a GPU

GPU_CHECK = BENCHMARKS / "gpu_check.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": ""}
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(GPU_CHECK), *args], capture_output=True, text=True, timeout=60, env=env
    )


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_bash
def test_gpu_check_dry_run_names_every_stage_and_its_command():
    proc = _gpu_check("--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for stage in ("device", "gpu_tests", "gpt2", "shakespeare_char"):
        assert any(line.startswith(f"{stage}: timeout ") for line in lines), stage
    assert any("pytest -m gpu tests/gpu" in line for line in lines)
    runs = [line for line in lines if ":   runs " in line]
    assert len(runs) == 2 and all(" -m gptlab train " in r and "--train.compile" in r for r in runs)
    assert "--preset gpt2 " in runs[0] and "--preset shakespeare_char " in runs[1]
    limits = [int(line.split()[2]) for line in lines if ": timeout " in line]
    assert sum(limits) < 600  # the stages' time limits fit one 10-minute device command


@needs_bash
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_check_without_cuda_fails_fast_with_one_line():
    proc = _gpu_check()
    assert proc.returncode != 0 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_check: no CUDA device")
    bad = _gpu_check("--bogus")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_gpu_check_reads_pytest_counts(tmp_path, capsys):
    log = tmp_path / "pytest.log"
    log.write_text(
        "..F.s\nFAILED tests/gpu/test_engine_cuda.py::test_x - AssertionError\n"
        "1 failed, 3 passed, 1 skipped in 41.20s\n"
    )
    assert _gpu_check_module().tests(log, 1, 42.0) == 1
    row = json.loads(capsys.readouterr().out)
    assert (row["passed"], row["failed"], row["skipped"], row["ok"]) == (3, 1, 1, False)
    assert row["failures"] == ["tests/gpu/test_engine_cuda.py::test_x"]


@needs_shakespeare
def test_gpu_check_stops_a_run_at_its_target(tmp_path, monkeypatch, capsys):
    """The time-to-loss stage, on a tiny CPU run: it watches metrics.jsonl, stops the run at
    the first evaluation under the target, and reports that evaluation."""
    gc = _gpu_check_module()
    monkeypatch.setattr(gc, "CHAR_ARGS", [
        "--preset", "tiny", "--data.dataset", "shakespeare_char", "--train.device", "cpu",
        "--train.max_steps", "100000", "--train.eval_interval", "20", "--train.eval_steps", "2",
        "--train.no_save_checkpoints",
    ])  # fmt: skip
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", str(BENCHMARKS.parent / "src"))
    assert gc.char(tmp_path, tmp_path, target=3.2, timeout_s=600, dry_run=False) == 0  # a cap
    row = json.loads(capsys.readouterr().out)
    assert row["ok"] and row["ended"] == "done" and row["rc"] is None  # stopped, not finished
    *before, last = row["val_curve"]  # [step, elapsed_s, val_loss] rows
    assert last[2] <= 3.2 and all(val > 3.2 for _, _, val in before)
    assert row["step_at_target"] == row["val_curve"][-1][0] < 100000
    assert all(isinstance(row[k], float) for k in ("elapsed_s_at_target", "wall_s_to_target"))


def test_quantize_quality_reports_both_weight_formats(cli_env, text_file):
    """benchmarks/quantize_quality.py on a tiny trained run: both formats scored on the same
    val windows, and the comparison's figures are in range (nothing about timing)."""
    from gptlab.cli.main import main

    train = ["train", "--preset", "tiny", "--train.max_steps", "20", "--train.out_dir", "r"]
    assert main([*train, "--data.dataset", str(text_file)]) == 0
    script = BENCHMARKS / "quantize_quality.py"
    proc = subprocess.run(
        [sys.executable, str(script), "r", "--greedy-tokens", "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    setup, r = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert "cpu" in setup
    assert r["none"]["weights"] == "float32 weights" and "int8 weights" in r["int8"]["weights"]
    assert r["val_tokens"] > 0
    assert abs(r["none"]["val_loss"] - r["int8"]["val_loss"]) < 0.1  # a small perturbation
    assert 0 < r["max_abs_logit_diff"] < r["largest_logit"]
    assert r["greedy"]["tokens"] == 20 and 0 <= r["greedy"]["agree"] <= 1
    missing = subprocess.run([sys.executable, str(script), "nowhere"], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert (
        missing.returncode != 0 and "error: run directory nowhere does not exist" in missing.stderr
    )
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
@needs_shakespeare
def test_cpu_recipe_sweep_runs_the_preset_and_a_variant_per_seed(tmp_path):
    script = BENCHMARKS / "cpu_recipe_sweep.py"
    env = {**os.environ, "GPTLAB_CACHE_DIR": str(tmp_path / "cache"), "GPTLAB_OFFLINE": "1"}
    cmd = [sys.executable, str(script), "--preset", "tiny", "--seeds", "1", "2", "--dtype",
           "float32", "--variant", 'lr={"optim.lr": 0.001}']  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert "cpu" in lines[0] and lines[0]["variants"] == {"preset": {}, "lr": {"optim.lr": 0.001}}
    runs = [r for r in lines if "variant" in r]
    assert [(r["variant"], r["seed"]) for r in runs] == [
        ("preset", 1), ("lr", 1), ("preset", 2), ("lr", 2),
    ]  # fmt: skip
    assert all(r["steps"] == 20 for r in runs)
    summary = {r["summary"]: r for r in lines if "summary" in r}
    for name in ("preset", "lr"):
        vals = [r["val_loss"] for r in runs if r["variant"] == name]
        assert summary[name]["val_losses"] == vals and summary[name]["worst"] == max(vals)
    assert runs[0]["val_loss"] != runs[1]["val_loss"]  # the variant really trained differently
    bad = subprocess.run([*cmd[:2], "--variant", 'x={"optim.nope": 1}'], capture_output=True,
                         text=True, timeout=120, env=env)  # fmt: skip
    assert bad.returncode != 0 and "unknown config field 'optim.nope'" in bad.stderr
