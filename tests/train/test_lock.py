"""One trainer per run directory (issue 15, part 8): the run-dir lock refuses a second trainer
and names the holder, the OS frees it when the holder dies, and torchrun workers end when their
launcher is killed, after which the run resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptlab import checkpoint
from gptlab.config import to_dict
from gptlab.errors import GptlabError
from gptlab.runtime import make_runtime
from gptlab.train import lock as lock_mod
from gptlab.train.checks import check_fresh_run_dir
from gptlab.train.lock import LOCK_FILE, hold_run_dir, lock_run_dir
from gptlab.train.loop import train

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GPTLAB_CACHE_DIR": str(tmp_path / "cache"),
        "GPTLAB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _wait_for(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    """Poll `condition` until it holds; fail after `timeout_s` or if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.02)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields from the state on (field 3): the name in parentheses may hold
    spaces. None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _children(parent: int) -> dict[int, str]:
    """{pid: start time} of the processes whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == parent:
            found[int(entry.name)] = fields[19]  # field 22, starttime: tells a reused pid apart
    return found


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start


def _kill_all(procs: dict[int, str]) -> None:
    for pid, start in procs.items():
        if _alive(pid, start):
            os.kill(pid, signal.SIGKILL)


# -- the lock ---------------------------------------------------------------------------------


@needs_flock
def test_holder_is_named_and_its_death_frees_the_lock(tmp_path):
    """Another process holds the lock: refused with its pid. SIGKILL it: the OS drops the lock,
    and the file it leaves behind neither blocks the next trainer nor makes the directory a run."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom gptlab.train.lock import lock_run_dir\n"
            "lock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(GptlabError) as refused:
            lock_run_dir(run_dir)
        assert str(refused.value) == (
            f"run directory {run_dir} is in use by another trainer (pid {holder.pid}); wait for "
            "it to finish or stop it, or pick another --train.out_dir"
        )
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / LOCK_FILE).read_text().split()[0] == str(holder.pid)  # left behind
    check_fresh_run_dir(run_dir)  # a leftover lock file is not a run
    lock = lock_run_dir(run_dir)
    assert lock.is_locked and (run_dir / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    lock.release()
    assert run_dir.is_dir() and not any(run_dir.iterdir())  # the file goes with the lock


@needs_flock
def test_lock_leaves_the_run_dir_as_it_found_it(tmp_path):
    """The lock adds RUN_DIR/.lock while held and nothing else, touches no other file, and a
    run directory the lock created is gone again after it (if still empty)."""
    run_dir = tmp_path / "run"
    (run_dir / "latest").mkdir(parents=True)
    (run_dir / "latest" / "state.pt").write_bytes(b"x")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}

    lock = lock_run_dir(run_dir)
    assert {p.name for p in run_dir.iterdir()} == {"latest", "metrics.jsonl", LOCK_FILE}
    with pytest.raises(GptlabError, match=rf"in use by another trainer \(pid {os.getpid()}\)"):
        lock_run_dir(run_dir)  # a second descriptor conflicts, even in the same process
    lock.release()
    lock_run_dir(run_dir).release()
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before

    new = tmp_path / "new"
    lock_run_dir(new).release()
    assert not new.exists()  # made for the lock, and still empty: removed
    empty = tmp_path / "empty"
    empty.mkdir()
    lock_run_dir(empty).release()
    assert empty.is_dir() and not any(empty.iterdir())  # the user's own directory stays


@needs_flock
def test_a_file_deleted_by_its_last_holder_is_not_locked(tmp_path, monkeypatch):
    """A trainer that opened the lock file just before its holder deleted it (letting go) may
    lock the deleted file; it must notice, and lock the file now at the path instead."""
    real_open, opened = lock_mod._open, []

    def open_then_lose_it(path):
        fd = real_open(path)
        if not opened:
            os.unlink(path)  # what a releasing holder does between our open and our flock
        opened.append(fd)
        return fd

    monkeypatch.setattr(lock_mod, "_open", open_then_lose_it)
    lock = lock_run_dir(tmp_path)
    monkeypatch.undo()
    assert len(opened) == 2
    with pytest.raises(GptlabError, match="in use by another trainer"):
        lock_run_dir(tmp_path)  # the file at the path is the one held
    lock.release()


@needs_flock
def test_refusal_names_a_holder_on_another_host(tmp_path):
    lock = lock_run_dir(tmp_path)
    (tmp_path / LOCK_FILE).write_text("4321 node-b\n")  # as a trainer on node-b labels it
    with pytest.raises(GptlabError, match=r"\(pid 4321 on node-b\)"):
        lock_run_dir(tmp_path)
    (tmp_path / LOCK_FILE).write_text("")  # locked, but not labelled yet
    with pytest.raises(GptlabError, match=r"\(pid unknown\)"):
        lock_run_dir(tmp_path)
    lock.release()


@needs_flock
def test_hold_run_dir_releases_on_error(tmp_path):
    runtime = make_runtime("cpu", "float32")
    with pytest.raises(RuntimeError, match="boom"), hold_run_dir(tmp_path, runtime):
        with pytest.raises(GptlabError, match="in use by another trainer"):
            lock_run_dir(tmp_path)
        raise RuntimeError("boom")
    lock_run_dir(tmp_path).release()


RANKS_SCRIPT = """
import sys
from gptlab.cli.common import torchrun_launch
from gptlab.errors import GptlabError
from gptlab.runtime import close_runtime, make_runtime
from gptlab.train.lock import hold_run_dir

def say(line):  # one write per line: print() writes the newline separately, and the ranks
    sys.stdout.write(line + "\\n")  # share one pipe, so their lines could interleave
    sys.stdout.flush()

runtime = make_runtime("cpu", "float32", torchrun_launch())
for run_dir in sys.argv[1:]:
    try:
        with hold_run_dir(run_dir, runtime):
            say(f"rank {runtime.rank} holds {run_dir}")
    except GptlabError as e:
        say(f"rank {runtime.rank} refused: {e}")
close_runtime(runtime)
"""


@needs_flock
def test_every_rank_learns_of_a_refusal(tmp_path):
    """Under torchrun rank 0 takes the lock and broadcasts the outcome: with the directory held
    elsewhere both ranks raise (neither waits at a collective); a free one is held by rank 0."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    taken, free = tmp_path / "taken", tmp_path / "free"
    lock = lock_run_dir(taken)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                str(script),
                str(taken),
                str(free),
            ],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        lock.release()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = set(done.stdout.splitlines())
    refusal = f"in use by another trainer (pid {os.getpid()})"
    for rank in (0, 1):
        assert any(ln.startswith(f"rank {rank} refused: ") and refusal in ln for ln in lines)
        assert f"rank {rank} holds {free}" in lines
    lock_run_dir(free).release()  # released at the end of the block


# -- parent death -----------------------------------------------------------------------------

LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], start_new_session=True)
time.sleep(600)
"""

WORKER = """
import os, sys, time
from gptlab import runtime
if sys.argv[1] == "watchdog":
    runtime._watch_parent(os.getppid(), 0.05)
else:
    assert runtime.exit_with_launcher() == "prctl"
with open(sys.argv[2], "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
"""


@needs_proc
@pytest.mark.parametrize("how", ["prctl", "watchdog"])
def test_worker_exits_when_its_launcher_is_killed(tmp_path, how):
    """A worker in a session of its own, like torchrun's, ends once its launcher is SIGKILLed:
    by the kernel's parent-death signal, or by the watchdog thread used where there is none."""
    ready = tmp_path / "worker_pid"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WORKER, how, str(ready)], start_new_session=True
    )
    workers: dict[int, str] = {}
    try:
        _wait_for(lambda: ready.exists() and ready.read_text(), 60, "armed worker", launcher)
        pid = int(ready.read_text())
        workers = {pid: _stat(pid)[19]}
        launcher.kill()
        launcher.wait()
        _wait_for(lambda: not any(_alive(p, s) for p, s in workers.items()), 10, "worker exit")
    finally:
        launcher.kill()
        launcher.wait()
        _kill_all(workers)


# -- end to end through the CLI ----------------------------------------------------------------


def _with(cfg, **train_kw):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))


def _write_config(cfg, path: Path) -> Path:
    path.write_text(json.dumps(to_dict(cfg)))
    return path


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.mark.slow
@needs_flock
def test_resume_beside_a_live_run_is_refused(tiny_run, tmp_path):
    """`gptlab train --resume` on a run that is still training exits with one line naming the
    trainer's pid. Needs the loop to train under hold_run_dir."""
    run_dir = tmp_path / "run"
    long_run = _with(tiny_run, max_steps=100_000, eval_interval=10)
    config = _write_config(long_run, tmp_path / "c.json")
    gptlab = [sys.executable, "-m", "gptlab", "train"]
    with open(tmp_path / "live.log", "w") as log:
        live = subprocess.Popen(
            [*gptlab, "--config", str(config), "--train.out_dir", str(run_dir)],
            env=_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: (run_dir / "latest").is_dir(), 120, "checkpoint", live)
        second = subprocess.run(
            [*gptlab, "--resume", "--train.out_dir", str(run_dir)],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert live.poll() is None  # the live run goes on
    finally:
        live.kill()
        live.wait()
    errors = [ln for ln in second.stderr.splitlines() if "error" in ln.lower()]
    assert second.returncode == 1 and errors == [
        f"error: run directory {run_dir} is in use by another trainer (pid {live.pid}); wait "
        "for it to finish or stop it, or pick another --train.out_dir"
    ], second.stderr[-3000:]


def _metrics(run_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.mark.slow
@needs_proc
def test_killing_torchrun_ends_its_workers_and_the_run_resumes_exactly(
    tiny_run, locations, tmp_path
):
    """SIGKILL the torchrun launcher mid-run: no worker is alive within 10 s (as orphans they
    would train on, for 100,000 steps), and `--resume --train.max_steps 120` then continues as an
    uninterrupted 120-step run, loss for loss (2 ranks x 1 micro-batch = 1 process x 2
    accumulated). The constant LR schedule does not depend on max_steps."""
    constant_lr = dataclasses.replace(tiny_run.optim, schedule="constant")
    cfg = _with(
        dataclasses.replace(tiny_run, optim=constant_lr),
        max_steps=120,
        batch_size=4,
        eval_interval=10,
        log_interval=10,
    )
    run_dir = tmp_path / "run"
    config = _write_config(_with(cfg, max_steps=100_000), tmp_path / "c.json")
    cmd = [*TORCHRUN, "-m", "gptlab", "train", "--config", str(config)]
    cmd += ["--train.out_dir", str(run_dir)]
    workers: dict[int, str] = {}
    with open(tmp_path / "killed.log", "w") as log:
        launcher = subprocess.Popen(
            cmd, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for(lambda: (run_dir / "latest").is_dir(), 120, "checkpoint", launcher)
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        launcher.kill()  # the launcher only: its workers run in sessions of their own
        launcher.wait()
        _wait_for(lambda: not any(_alive(p, s) for p, s in workers.items()), 10, "worker exit")
    finally:
        launcher.kill()
        launcher.wait()
        _kill_all(workers)
    stopped_at = checkpoint.load_pt(run_dir / "latest", checkpoint.STATE)["step"]
    assert stopped_at < cfg.train.max_steps, "the kill came too late: give the run more steps"

    resume = [*cmd, "--resume", "--train.max_steps", str(cfg.train.max_steps)]
    env = _env(tmp_path)
    resumed = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    reference = train(
        _with(cfg, grad_accum_steps=2, out_dir=str(tmp_path / "reference")),
        make_runtime("cpu", "float32"),
        locations,
    ).run_dir
    for key in ("train_loss", "val_loss"):
        want, got = _metrics(reference, key), _metrics(run_dir, key)
        assert any(s > stopped_at for s in want) and sorted(got) == sorted(want), (key, got)
        for s in want:
            assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), (key, s)


def test_a_refused_run_leaves_no_empty_parent_directories(tmp_path):
    run_dir = tmp_path / "runs" / "deep" / "r"
    lock = lock_run_dir(run_dir)
    assert run_dir.is_dir()
    lock.release()
    assert not (tmp_path / "runs").exists()  # all three were made by the lock: all gone
    (tmp_path / "runs").mkdir()
    lock = lock_run_dir(run_dir)
    lock.release()
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "deep").exists()
