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
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gptlab.config import to_dict
from gptlab.errors import ConfigError, GptlabError
from gptlab.train.config import RunConfig

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
METRICS = "metrics.jsonl"  # what training writes in each run directory
RUN_CONFIG = "ablate_config.json"  # the resolved config the runner hands to `gptlab train`
RUN_LOG = "train.log"  # the training process's stdout and stderr
LAUNCHERS = ("local", "submitit")
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


# ---------------------------------------------------------------- reading what runs wrote


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, skipping a line cut off mid-write."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_results(out: Path) -> list[dict[str, Any]]:
    """The latest record of each (variant, seed) in OUT/results.jsonl, in first-seen order."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in read_jsonl(Path(out) / RESULTS):
        if "variant" in rec and "seed" in rec:
            key = (str(rec["variant"]), int(rec["seed"]))
            latest.pop(key, None)  # re-insert: the order is that of the latest records
            latest[key] = rec
    return list(latest.values())


def parse_time_to(metric: str) -> tuple[str, str, float] | None:
    """'time_to:val_loss<=1.9' -> ('val_loss', '<=', 1.9); None for a plain metric name;
    ConfigError for a malformed one."""
    if not metric.startswith("time_to:"):
        return None
    body = metric.removeprefix("time_to:")
    for op in ("<=", ">="):
        key, sep, target = body.partition(op)
        if sep:
            try:
                return key.strip(), op, float(target)
            except ValueError:
                break
    raise ConfigError(
        f"metric {metric!r} is not time_to:METRIC<=X (or >=X), e.g. time_to:val_loss<=1.9"
    )


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's final numbers from its metrics.jsonl: the last eval row's metrics, the mean
    training throughput, the last train loss, and the parameters from its config.json."""
    rows = read_jsonl(Path(run_dir) / METRICS)
    evals = [r for r in rows if "val_loss" in r]
    steps = [r for r in rows if "train_loss" in r]
    final: dict[str, Any] = {}
    if evals:
        last = evals[-1]
        keep = ("val_loss", "val_bpb", "train_eval_loss", "step", "tokens", "elapsed_s")
        final |= {k: last[k] for k in keep if k in last}
        final["train_time_s"] = last.get("train_time_s")
        final |= {k: v for k, v in last.items() if k.startswith("eval/")}
    if steps:
        final["train_loss"] = steps[-1]["train_loss"]
        rates = [r["tokens_per_s"] for r in steps if "tokens_per_s" in r]
        final["tokens_per_s"] = sum(rates) / len(rates) if rates else None
    params = _params(Path(run_dir) / "config.json")
    if params is not None:
        final["params"] = params
    return final


def _params(config_json: Path) -> int | None:
    """Parameter count of the model a run trained (its config.json holds the data's vocab)."""
    from gptlab.config import from_dict
    from gptlab.model.accounting import build_meta, count_params  # torch: only when needed
    from gptlab.model.config import ModelConfig

    if not config_json.is_file():
        return None
    try:
        model = from_dict(ModelConfig, json.loads(config_json.read_text())["model"])
    except (ValueError, KeyError, TypeError):
        return None
    return count_params(build_meta(model)).total


def metric_value(run_dir: Path, metric: str) -> tuple[float | None, str | None]:
    """(value, why it is missing) of `metric` for a finished run: the last eval row's value, or
    for time_to:KEY<=X the training seconds of the first eval that reached X (None, with a note,
    when none did)."""
    evals = [r for r in read_jsonl(Path(run_dir) / METRICS) if "val_loss" in r]
    target = parse_time_to(metric)
    if target is None:
        if not evals or metric not in evals[-1]:
            return None, f"the run's last evaluation logged no {metric}"
        return float(evals[-1][metric]), None
    key, op, x = target
    for row in evals:
        v = row.get(key)
        if v is not None and (v <= x if op == "<=" else v >= x):
            return float(row.get("train_time_s", row.get("elapsed_s"))), None
    return None, f"never reached {key} {op} {x:g}"


# ---------------------------------------------------------------- provenance


def git_commit() -> str:
    """The commit of the gptlab source tree the runs use ('unknown' outside a git checkout)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where the runs ran: host, CPU model and cores, Python and platform."""
    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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


def run_command(cmd: list[str], log_path: str) -> int:
    """Run one training command with its output appended to `log_path`; its exit status. This
    is what a submitit job executes (a module-level function, so it pickles)."""
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode


def error_line(log_path: Path, returncode: int) -> str:
    """The error a failed run printed (its last 'error:' line, else its last line)."""
    lines = []
    if log_path.is_file():
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error:" in ln or "Error" in ln.split(":")[0]:
            return f"{ln} (exit status {returncode}; log: {log_path})"
    tail = lines[-1] if lines else "no output"
    return f"exit status {returncode}: {tail} (log: {log_path})"


class _LocalSlot:
    """A run in flight as a local subprocess (a fresh interpreter). The CLI launches runs
    faster, forked from a fork server (gptlab.cli.launch); this is the library's default."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        self.log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in poll)
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None:
            self.log.close()
        return rc

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class _SubmititSlot:
    """A run in flight as a submitit job (SLURM, or submitit's local executor)."""

    def __init__(self, executor: Any, cmd: list[str], log_path: Path) -> None:
        self.job = executor.submit(run_command, cmd, str(log_path))

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as e:  # the job itself failed (node lost, cancelled): a failed run
            log.warning("submitit job %s failed: %s", self.job.job_id, e)
            return -1

    def stop(self) -> None:
        self.job.cancel(check=False)


def _executor(out: Path, launcher: str) -> Any:
    if launcher == "local":
        return None
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--launcher submitit needs submitit: pip install 'gptlab[cluster]'"
        ) from None
    executor = submitit.AutoExecutor(folder=str(out / "submitit"))
    return executor


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
    executor = _executor(out, launcher)
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
            (launch or _LocalSlot)(cmd, log_path)
            if executor is None
            else _SubmititSlot(executor, cmd, log_path)
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
