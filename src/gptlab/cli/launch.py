"""Start local training runs fast: fork each from a server that has imported torch and
gptlab's trainer once (multiprocessing's "forkserver"), instead of a fresh interpreter paying
Python's and torch's imports (~4 s on a 2-core CPU) every time. What `gptlab ablate` and
`gptlab scale` hand to the runner (gptlab.ablate.runner.execute's `launch`).

Each run is still its own process: a crash cannot reach the runner. It starts with the
runner's environment and working directory of the moment it is launched (the server's own
are those of its first use), its output appended to the run's log.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

PRELOAD = ["torch", "gptlab.cli.main", "gptlab.cli.train"]  # what every run imports


def _fork_server() -> Any:
    """The multiprocessing context whose server process imports PRELOAD once; every local run
    is forked from it (started on first use, shared by all runs of this process)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _train_process(argv: list[str], log_path: str, env: dict[str, str], cwd: str) -> None:
    """The body of one local run, in a process forked from the fork server: the runner's
    environment and directory at launch, output appended to the run's log, then exactly what
    `gptlab <argv>` does, its exit status the process's."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)  # stdout and stderr (prints, logging, tracebacks) go to the log
    os.dup2(fd, 2)
    os.close(fd)
    from gptlab.cli.main import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class ForkedRun:
    """A run in flight, forked from the fork server: poll() and stop() as the runner needs."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n")
        argv = cmd[3:]  # [python, -m, gptlab, train, ...] -> [train, ...]
        args = (argv, str(log_path), dict(os.environ), os.getcwd())
        self.proc = _fork_server().Process(target=_train_process, args=args, daemon=False)
        self.proc.start()

    def poll(self) -> int | None:
        if self.proc.is_alive():
            return None
        self.proc.join()
        return self.proc.exitcode

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def forked(cmd: list[str], log_path: Path) -> ForkedRun:
    """Launch `cmd` (python -m gptlab train ...) as a run forked from the fork server."""
    return ForkedRun(cmd, log_path)
