"""Run a plan of (variant, seed) trainings, each as its own `gptlab train` process, and collect
one record per run in OUT/results.jsonl.

Key decisions:
- A process per run: a crash, an out-of-memory kill or a NaN in one run cannot take the
  runner (or the other runs) down; the run is recorded as failed with its error line. How a
  local run starts is a hook (`launch`): by default a fresh `python -m gptlab train`; the CLI
  passes gptlab.cli.launch.forked, which forks each run from a server that imported torch
  and the trainer once, saving ~4 s of imports per run.
- Resumable by construction: a run whose latest record says done (and whose run directory still
  holds its metrics) is skipped; an interrupted one restarts with `--resume` from its latest
  checkpoint, so a killed ablation loses at most one eval interval of each run in flight.
- results.jsonl is append-only, one JSON object per line, each written with one write and
  fsync'ed; `read_results` keeps the latest record of each (variant, seed) and skips a line a
  kill cut off mid-write.
- Scheduling is a handful of slots polled twice a second (locally), or submitit's executor
  (`launcher="submitit"`: SLURM on a cluster, its local executor elsewhere), never a queue of
  our own.

What a run's process is (a subprocess or a submitit job) lives in processes.py, reading
results.jsonl and metrics.jsonl in results.py, and the commit and machine of a record in
provenance.py; their names used elsewhere stay importable from here.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gptlab.ablate.processes import LAUNCHERS, LocalSlot, SubmititSlot, error_line, make_executor
from gptlab.ablate.provenance import cpu_model, git_commit, machine  # noqa: F401 (re-exported)
from gptlab.ablate.results import (
    METRICS,
    RESULTS,
    final_metrics,
    metric_value,
    parse_time_to,
    read_jsonl,  # noqa: F401 (re-exported: report.py imports it from here)
    read_results,
)
from gptlab.config import to_dict
from gptlab.errors import ConfigError, GptlabError
from gptlab.train.config import RunConfig

log = logging.getLogger(__name__)

RUN_CONFIG = "ablate_config.json"  # the resolved config the runner hands to `gptlab train`
RUN_LOG = "train.log"  # the training process's stdout and stderr
POLL_S = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """One training of the plan: a variant at a seed, with its fully resolved config."""

    variant: str  # e.g. "rope-muon", or "d4" for a scaling size
    seed: int
    config: RunConfig  # train.seed == seed, train.out_dir == str(run_dir)
    run_dir: Path  # OUT/runs/<variant>/seed<k>


def run_dir_for(out: Path, variant: str, seed: int) -> Path:
    return Path(out) / "runs" / variant / f"seed{seed}"


# ---------------------------------------------------------------- launching one run


def command(p: PlannedRun, resume: bool) -> list[str]:
    """The `gptlab train` command line of a run: its resolved config file, plus --resume."""
    cmd = [sys.executable, "-m", "gptlab", "train", "--config", str(p.run_dir / RUN_CONFIG)]
    return [*cmd, "--resume"] if resume else cmd


def prepare_run_dir(p: PlannedRun) -> bool:
    """Write the run's config file; returns whether to resume (a checkpoint is there). A run
    that died before its first checkpoint starts over: its partial files are moved aside."""
    if Path(p.config.train.out_dir).resolve() != p.run_dir.resolve():
        raise ConfigError(
            f"run {p.variant}/seed{p.seed}: train.out_dir {p.config.train.out_dir} is not its run "
            f"directory {p.run_dir}"
        )
    p.run_dir.mkdir(parents=True, exist_ok=True)
    resume = (p.run_dir / "latest").exists()
    if not resume:
        for name in (METRICS, "best"):
            old = p.run_dir / name
            if old.exists():
                aside = p.run_dir / f"{name}.before-restart"
                if aside.is_dir():
                    shutil.rmtree(aside)
                old.replace(aside)
    tmp = p.run_dir / f".{RUN_CONFIG}.tmp"
    tmp.write_text(json.dumps(to_dict(p.config), indent=2) + "\n")
    tmp.replace(p.run_dir / RUN_CONFIG)
    return resume


# ---------------------------------------------------------------- the plan


def _is_done(rec: dict[str, Any] | None, p: PlannedRun) -> bool:
    return bool(rec) and rec.get("status") == "done" and (p.run_dir / METRICS).is_file()


def _fmt_s(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(
    done: int, failed: int, running: int, left: int, elapsed_s: float, eta_s: float | None
) -> str:
    """'3/12 done (1 failed), 2 running, 7 left | elapsed 4m10s, ETA 12m30s'."""
    total = done + failed + running + left
    fail = f" ({failed} failed)" if failed else ""
    eta = _fmt_s(eta_s) if eta_s is not None else "?"
    return (
        f"{done + failed}/{total} finished{fail}, {running} running, {left} left | "
        f"elapsed {_fmt_s(elapsed_s)}, ETA {eta}"
    )


def execute(
    plan: Sequence[PlannedRun],
    out: Path,
    *,
    metric: str,
    parallel: int = 1,
    launcher: str = "local",
    on_progress: Callable[[str], None] | None = None,
    extra_record: Callable[[PlannedRun], dict] | None = None,
    gpus: int = 0,
    launch: Callable[[list[str], Path], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train every run of `plan` not already done, at most `parallel` at once, appending one
    record per finished or failed run to OUT/results.jsonl; returns one record per run, in
    plan order. `gpus` > 1 (the CLI counts them) gives each run in flight its own device
    (train.device cuda:K for slot K, unless the config names a device). `launch(cmd, log_path)`
    starts a local run and returns a handle with poll() -> exit status or None, and stop()
    (default: a subprocess running `cmd`)."""
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    parse_time_to(metric)  # a malformed time_to: fails before any run
    out = Path(out)
    keys = [(p.variant, p.seed) for p in plan]
    if len(set(keys)) != len(keys):
        raise ConfigError("the plan holds the same (variant, seed) twice; name variants uniquely")
    out.mkdir(parents=True, exist_ok=True)
    executor = make_executor(out, launcher)
    previous = {(r["variant"], int(r["seed"])): r for r in read_results(out)}
    records: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for p in plan:
        rec = previous.get((p.variant, p.seed))
        if _is_done(rec, p):
            records[(p.variant, p.seed)] = rec
        else:
            todo.append(p)
    skipped = len(plan) - len(todo)
    if skipped:
        log.info("%d of %d runs already done in %s: skipped", skipped, len(plan), out)
    commit, where = git_commit(), machine()
    t0 = time.monotonic()
    durations: list[float] = []
    running: dict[int, tuple[PlannedRun, Any, float, bool]] = {}  # slot -> (run, handle, start)
    queue = list(todo)
    failed = 0

    def report() -> None:
        if on_progress is None:
            return
        eta = None
        if durations:
            mean = sum(durations) / len(durations)
            in_flight = sum(
                max(0.0, mean - (time.monotonic() - s)) for _, _, s, _ in running.values()
            )
            eta = (len(queue) * mean + in_flight) / min(parallel, max(1, len(queue) + len(running)))
        n_done = sum(r.get("status") == "done" for r in records.values())
        on_progress(
            progress_line(n_done, failed, len(running), len(queue), time.monotonic() - t0, eta)
        )

    def start(slot: int, p: PlannedRun) -> None:
        if gpus > 1 and p.config.train.device in ("auto", "cuda"):  # one device per slot
            tc = dataclasses.replace(p.config.train, device=f"cuda:{slot % gpus}")
            p = dataclasses.replace(p, config=dataclasses.replace(p.config, train=tc))
        resume = prepare_run_dir(p)
        cmd, log_path = command(p, resume), p.run_dir / RUN_LOG
        handle = (
            (launch or LocalSlot)(cmd, log_path)
            if executor is None
            else SubmititSlot(executor, cmd, log_path)
        )
        running[slot] = (p, handle, time.monotonic(), resume)
        log.info("%s seed %d: %s", p.variant, p.seed, "resumed" if resume else "started")

    def finish(slot: int, rc: int) -> None:
        nonlocal failed
        p, _, started, resumed = running.pop(slot)
        rec = _record(p, rc, metric, time.monotonic() - started, resumed, commit, where, out)
        if extra_record is not None:
            rec |= extra_record(p)
        _append(out / RESULTS, rec)
        records[(p.variant, p.seed)] = rec
        if rec["status"] == "done":
            durations.append(rec["wall_s"])
        else:
            failed += 1
            log.warning("%s seed %d failed: %s", p.variant, p.seed, rec["error"])

    report()
    try:
        while queue or running:
            for slot in range(parallel):
                if slot not in running and queue:
                    start(slot, queue.pop(0))
                    report()
            time.sleep(POLL_S)
            for slot in list(running):
                rc = running[slot][1].poll()
                if rc is not None:
                    finish(slot, rc)
                    report()
    except BaseException:  # Ctrl-C or a kill: stop the children; their checkpoints stay
        for _, handle, _, _ in running.values():
            handle.stop()
        raise
    return [records[k] for k in keys]


def _record(
    p: PlannedRun,
    rc: int,
    metric: str,
    wall_s: float,
    resumed: bool,
    commit: str,
    where: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """The results.jsonl object of a run that just ended."""
    try:
        run_dir = str(p.run_dir.resolve().relative_to(out.resolve()))
    except ValueError:
        run_dir = str(p.run_dir)
    value, missing, error = None, None, None
    if rc == 0:
        value, missing = metric_value(p.run_dir, metric)
        if value is None and parse_time_to(metric) is None:
            error = f"finished, but {missing}"
    else:
        error = error_line(p.run_dir / RUN_LOG, rc)
    rec: dict[str, Any] = {
        "variant": p.variant,
        "seed": p.seed,
        "status": "done" if error is None else "failed",
        "metric": metric,
        "value": value,
        "run_dir": run_dir,
        "final": final_metrics(p.run_dir),
        "wall_s": wall_s,
        "resumed": resumed,
        "returncode": rc,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "machine": where,
        "config": to_dict(p.config),
    }
    if error is not None:
        rec["error"] = error
    if missing is not None and error is None:
        rec["note"] = missing  # time_to: a finished run that never reached the target
    return rec


def _append(path: Path, rec: dict[str, Any]) -> None:
    """One line, one write, flushed to disk: a kill leaves either the line or nothing."""
    line = json.dumps(rec, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def check_out_dir(out: Path, spec_raw: dict[str, Any], force: bool, spec_file: str) -> None:
    """Refuse an output folder that holds another spec's results (unless `force`), then record
    this spec in it."""
    path = Path(out) / spec_file
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None
        if stored != spec_raw and not force:
            raise GptlabError(
                f"{out} holds the results of a different spec ({path}); use another --out "
                "folder, or --force to run this spec there (finished runs of the same names are "
                "kept)"
            )
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{spec_file}.tmp")
    tmp.write_text(json.dumps(spec_raw, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
