"""Provenance of a results record: the git commit of the gptlab source tree and the machine
the runs ran on (host, CPU model and cores, Python, platform).

Separate from the runner so that benchmarks can name the CPU they measured on (`cpu_model`)
without the runner's scheduling code; nothing here fails: unknowns read 'unknown' or fall back
to what `platform` knows.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


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
