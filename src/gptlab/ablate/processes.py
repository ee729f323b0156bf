"""One training run's process: a local subprocess or a submitit job, polled for its exit
status and stopped on an interrupt, and the error line a failed run printed in its log.

Separate from the runner (runner.py), which decides what to run and when; here is only how a
command runs. Both kinds of handle answer poll() -> exit status or None, and stop(), the same
contract as the `launch` hook the CLI passes (gptlab.cli.launch.forked).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "submitit")


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


class LocalSlot:
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


class SubmititSlot:
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


def make_executor(out: Path, launcher: str) -> Any:
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
