"""The stages of benchmarks/gpu_check.sh that need more than a shell: each prints one JSON line.

    python benchmarks/gpu_check.py probe              exit 1 with one line unless CUDA works here
    python benchmarks/gpu_check.py device             the GPU(s) (nvidia-smi), torch, the CPU
    python benchmarks/gpu_check.py tests LOG RC       pytest's counts from its log
    python benchmarks/gpu_check.py gpt2 --out DIR     GPT-2 124M ms/step, tokens/s and MFU
    python benchmarks/gpu_check.py char --out DIR     shakespeare_char: wall time to val <= 1.47
    (--runs DIR puts the run directory elsewhere; --dry-run prints the command only)

`gpt2` and `char` run the real `gptlab train` command (`python -m gptlab train`) and watch its
metrics.jsonl while it runs, so they can stop it as soon as they have their figure: `gpt2` once
the step rows past compilation are in (no final evaluation, which would compile the eval graph
too), `char` at the first evaluation with val loss at or under the target. `--dry-run` prints
the command instead of running it. Only `probe` and `device` import torch, so a dry run needs
no GPU and no torch.

Figures: ms/step, tokens/s and MFU are the medians of the log rows after the warm-up steps
(each row averages the steps since the last one; MFU is gptlab's, against the datasheet bf16
peak in train/health.py: 989 TFLOP/s for an H100 or H200). Time to val is the whole command's
wall time, from starting the process (imports, data preparation, compilation, evaluations
included) to the moment the crossing evaluation's row is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

MFU_TARGET = 0.50  # issue 20, on an H200
VAL_TARGET = 1.47  # nanoGPT's shakespeare_char result (about 3 minutes on an A100)
TIME_TARGET_S = 45.0  # issue 20, on an H200
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")
NEEDED_DATA = (  # in GPTLAB_DATA_DIR: the text and the GPT-2 tokenizer's files
    "tinyshakespeare/input.txt",
    "gpt2_tokenizer/encoder.json",
    "gpt2_tokenizer/vocab.bpe",
)

# Micro-batch 16 x 1024 with 4 micro-batches a step: 65,536 tokens, about a tenth of a second
# a step on an H200, so 60 steps measure well past compilation in seconds.
GPT2_ARGS = [
    "--preset", "gpt2", "--train.compile", "--train.dtype", "bfloat16",
    "--train.batch_size", "16", "--train.grad_accum_steps", "4",
    "--train.log_interval", "5", "--train.eval_interval", "100000", "--train.eval_steps", "1",
    "--optim.warmup_steps", "10", "--train.no_save_checkpoints",
]  # fmt: skip
# The GPU preset as it is, compiled, evaluated every 100 steps on 20 batches (3x the val split's
# tokens) so the crossing is seen within about 100 steps.
CHAR_ARGS = [
    "--preset", "shakespeare_char", "--train.compile", "--train.dtype", "bfloat16",
    "--train.eval_interval", "100", "--train.eval_steps", "20", "--train.log_interval", "50",
    "--train.no_save_checkpoints",
]  # fmt: skip


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def cpu_info() -> dict:
    """The CPU model and which of its bf16/AMX flags it has (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


# -- probe and device ---------------------------------------------------------------------------


def probe() -> int:
    """0 if torch sees a CUDA device and gptlab imports; else one line on stderr and 1."""
    try:
        import torch
    except ImportError as e:
        print(
            f"gpu_check: torch does not import ({e}); use a Python with a CUDA torch",
            file=sys.stderr,
        )
        return 1
    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is "
            "false); run it on a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return 1
    try:
        import gptlab.cli.main  # noqa: F401  (the CLI's dependencies: tyro, tiktoken, ...)
    except ImportError as e:
        print(
            f"gpu_check: gptlab does not import ({e}); install it (pip install -e .) or carry "
            "the missing wheels (docs/training.md, GPU check)",
            file=sys.stderr,
        )
        return 1
    data = os.environ.get("GPTLAB_DATA_DIR", "")
    missing = [p for p in NEEDED_DATA if not (Path(data) / p).exists()]
    if missing:
        print(
            f"gpu_check: GPTLAB_DATA_DIR={data!r} holds no {missing[0]}; point it at the shared "
            "data folder (tinyshakespeare/ and gpt2_tokenizer/)",
            file=sys.stderr,
        )
        return 1
    return 0


def nvidia_smi() -> list[dict] | str:
    fields = "name,memory.total,driver_version,clocks.max.sm,power.limit"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"
    keys = fields.split(",")
    return [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]


def device() -> int:
    import torch

    emit(
        {
            "stage": "device",
            "gpus": nvidia_smi(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "torch_device": torch.cuda.get_device_name(0),
            "bf16": torch.cuda.is_bf16_supported(),
            **cpu_info(),
        }
    )
    return 0


# -- pytest -------------------------------------------------------------------------------------


def tests(log: Path, rc: int, seconds: float) -> int:
    """pytest's final counts ("3 passed, 1 skipped in 40.2s") from its log, as JSON."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|error|skipped)\b", ln)]
    last = lines[-1] if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", last)}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    emit(
        {
            "stage": "gpu_tests",
            "rc": rc,
            "ok": rc == 0 and counts.get("passed", 0) > 0,
            "passed": counts.get("passed", 0),
            "failed": counts.get("failed", 0),
            "errors": counts.get("error", 0) + counts.get("errors", 0),
            "skipped": counts.get("skipped", 0),
            "failures": failed[:20],
            "seconds": round(seconds, 1),
            "summary": last.strip("= "),
        }
    )
    return rc


# -- training runs ------------------------------------------------------------------------------


def train_command(args: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "gptlab", "train", *args, "--train.out_dir", str(run_dir)]


def watch(cmd: list[str], run_dir: Path, log: Path, done, timeout_s: float):
    """Run `cmd`, reading run_dir/metrics.jsonl as it grows, until `done(rows)` is true, the
    process ends, or timeout_s passes; stop the process if it is still running. Returns
    (rows, seconds from start to the row that made `done` true or to the end, return code or
    None when stopped, why it ended)."""
    metrics, rows, offset = run_dir / "metrics.jsonl", [], 0
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        why = "exited"
        while True:
            if metrics.is_file():
                with open(metrics) as f:
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind("\n") + 1]  # whole rows only
                offset += len(complete)
                rows += [json.loads(x) for x in complete.splitlines() if x.strip()]
            wall = time.perf_counter() - t0
            if done(rows):
                why = "done"
                break
            if proc.poll() is not None:
                break
            if wall > timeout_s:
                why = "timeout"
                break
            time.sleep(0.05)
        rc = proc.poll()
        if rc is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the compile workers too
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return rows, wall, rc, why


def tail(log: Path, n: int = 8) -> list[str]:
    return log.read_text(errors="replace").splitlines()[-n:] if log.is_file() else []


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def gpt2(out: Path, runs: Path, steps: int, warmup: int, timeout_s: float, dry_run: bool) -> int:
    run_dir = runs / "gpt2_run"
    cmd = train_command([*GPT2_ARGS, "--train.max_steps", str(steps + 10)], run_dir)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    log = out / "gpt2.log"

    def done(rows):
        return any(r.get("step", 0) >= steps and "ms_per_step" in r for r in rows)

    rows, wall, rc, why = watch(cmd, run_dir, log, done, timeout_s)
    timed = [r for r in rows if "ms_per_step" in r and warmup < r["step"] <= steps]
    mfu = median(timed, "mfu")
    ok = why == "done" and bool(timed)
    emit(
        {
            "stage": "gpt2",
            "ok": ok,
            "ended": why,
            "rc": rc,
            "steps_timed": [timed[0]["step"], timed[-1]["step"]] if timed else None,
            "tokens_per_step": timed[-1]["tokens"] // timed[-1]["step"] if timed else None,
            "ms_per_step": round(median(timed, "ms_per_step"), 2) if timed else None,
            "tokens_per_s": round(median(timed, "tokens_per_s")) if timed else None,
            "mfu": round(mfu, 4) if mfu is not None else None,
            "mfu_target": MFU_TARGET,
            "meets_target": mfu is not None and mfu >= MFU_TARGET,
            "peak_mem_gb": round(max(r.get("peak_mem_gb", 0) for r in timed), 2) if timed else None,
            "wall_s": round(wall, 1),
            "command": shlex.join(cmd),
            **({} if ok else {"log_tail": tail(log)}),
        }
    )
    return 0 if ok else 1


def char(out: Path, runs: Path, target: float, timeout_s: float, dry_run: bool) -> int:
    run_dir = runs / "char_run"
    cmd = train_command(CHAR_ARGS, run_dir)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    log = out / "char.log"

    def done(rows):
        return any(r.get("val_loss", float("inf")) <= target for r in rows)

    rows, wall, rc, why = watch(cmd, run_dir, log, done, timeout_s)
    evals = [r for r in rows if "val_loss" in r]
    steps = [r for r in rows if "ms_per_step" in r]
    crossed = next((r for r in evals if r["val_loss"] <= target), None)
    best = min(evals, key=lambda r: r["val_loss"]) if evals else None
    emit(
        {
            "stage": "shakespeare_char",
            "ok": crossed is not None,
            "ended": why,
            "rc": rc,
            "target_val_loss": target,
            "wall_s_to_target": round(wall, 1) if crossed else None,
            "time_target_s": TIME_TARGET_S,
            "meets_target": crossed is not None and wall <= TIME_TARGET_S,
            "step_at_target": crossed["step"] if crossed else None,
            "elapsed_s_at_target": round(crossed["elapsed_s"], 1) if crossed else None,
            "train_time_s_at_target": round(crossed["train_time_s"], 1) if crossed else None,
            "best_val_loss": round(best["val_loss"], 4) if best else None,
            "best_val_step": best["step"] if best else None,
            "ms_per_step": round(median(steps[1:], "ms_per_step"), 2) if len(steps) > 1 else None,
            "val_curve": [
                [r["step"], round(r["elapsed_s"], 1), round(r["val_loss"], 4)] for r in evals
            ],
            "wall_s": round(wall, 1),
            "command": shlex.join(cmd),
            **({} if crossed else {"log_tail": tail(log)}),
        }
    )
    return 0 if crossed else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    sub.add_parser("probe")
    sub.add_parser("device")
    t = sub.add_parser("tests")
    t.add_argument("log", type=Path)
    t.add_argument("rc", type=int)
    t.add_argument("--seconds", type=float, default=0.0)
    g = sub.add_parser("gpt2")
    g.add_argument("--steps", type=int, default=60, help="stop after this many steps")
    g.add_argument("--warmup", type=int, default=20, help="steps left out of the medians")
    c = sub.add_parser("char")
    c.add_argument("--target", type=float, default=VAL_TARGET)
    for p in (g, c):
        p.add_argument("--out", type=Path, required=True, help="where the log goes")
        p.add_argument("--runs", type=Path, help="where the run directory goes (default --out)")
        p.add_argument("--timeout", type=float, default=180.0, help="seconds before stopping")
        p.add_argument("--dry-run", action="store_true", help="print the command only")
    a = ap.parse_args(argv)
    if a.stage == "probe":
        return probe()
    if a.stage == "device":
        return device()
    if a.stage == "tests":
        return tests(a.log, a.rc, a.seconds)
    runs = a.runs or a.out
    if not a.dry_run:
        a.out.mkdir(parents=True, exist_ok=True)
    if a.stage == "gpt2":
        return gpt2(a.out, runs, a.steps, a.warmup, a.timeout, a.dry_run)
    return char(a.out, runs, a.target, a.timeout, a.dry_run)


if __name__ == "__main__":
    sys.exit(main())
