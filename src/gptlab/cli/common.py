"""What every verb shares: logging setup, data locations from the environment, and tyro parsing
that turns any usage error into one line (a UsageError) instead of a boxed message.

This is the only layer that reads environment variables or prints.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import tyro

from gptlab.data.registry import Locations
from gptlab.errors import ConfigError
from gptlab.runtime import Launch

T = TypeVar("T")

EXIT_USAGE = 2  # bad flag or config value
EXIT_ERROR = 1  # a user-fixable problem found while running (missing file, corrupt checkpoint)


class UsageError(ConfigError):
    """A command-line mistake (a flag, an argument, a value): a ConfigError, so main prints it
    as one line with exit status 2."""


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Progress lines on stdout; `quiet` (ranks other than 0 of torchrun) keeps warnings only."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stdout,
        force=True,
    )


def torchrun_launch() -> Launch:
    """This process's place in a torchrun job, from the RANK, LOCAL_RANK and WORLD_SIZE that
    torchrun sets (a single process when they are absent)."""
    try:
        return Launch(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            is_torchrun_worker="TORCHELASTIC_RUN_ID" in os.environ,  # exits when torchrun dies
        )
    except ValueError:
        raise UsageError(
            "RANK, LOCAL_RANK or WORLD_SIZE is set but not an integer; launch with torchrun or "
            "unset them"
        ) from None


def rank_prefix() -> str:
    """'[rank R] ' for messages of a multi-process torchrun job, else ''."""
    try:
        launch = torchrun_launch()
    except UsageError:
        return ""
    return f"[rank {launch.rank}] " if launch.world_size > 1 else ""


def locations() -> Locations:
    """Data folder (GPTLAB_DATA_DIR), cache (GPTLAB_CACHE_DIR, else the XDG cache), whether
    downloads are allowed (not when GPTLAB_OFFLINE=1) and tiktoken's cache
    (TIKTOKEN_CACHE_DIR), from the environment."""
    data_dir = os.environ.get("GPTLAB_DATA_DIR")
    cache = os.environ.get("GPTLAB_CACHE_DIR")
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(xdg) / "gptlab")
    tiktoken_cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    return Locations(
        cache_dir=Path(cache).expanduser(),
        data_dir=Path(data_dir).expanduser() if data_dir else None,
        allow_download=os.environ.get("GPTLAB_OFFLINE", "") in ("", "0"),
        tiktoken_cache_dir=Path(tiktoken_cache).expanduser() if tiktoken_cache else None,
    )


_BOX_CHARS = "│╭╮╰╯─┃┏┓┗┛━|+"


def _condense(text: str) -> str:
    """One line from tyro's boxed error: the title and the rows before the help hint."""
    lines = []
    for raw in text.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw).strip().strip(_BOX_CHARS).strip()
        if not line or set(line) <= set(_BOX_CHARS + " -"):
            continue
        if line.startswith(("For full helptext", "Argument helptext")):
            break
        lines.append(line)
    msg = " ".join(lines)
    msg = re.sub(r"^(Value error|Unrecognized options|Parsing error|Required options)\s+", "", msg)
    msg = re.sub(r"Error parsing run\.\w+: ", "", msg)  # our ValueErrors already name the field
    msg = re.sub(r"\s+", " ", msg)
    m = re.match(r"(.*?)\s*Perhaps you meant:\s*(\S+)", msg)
    if m:  # keep the suggestion, drop tyro's repeated help text
        msg = f"{m.group(1)}; did you mean {m.group(2)}?"
    return msg


def parse(cls: type[T], args: Sequence[str], prog: str, default: Any = None, **kw: Any) -> T:
    """tyro.cli, but a usage error raises UsageError with a one-line message.

    tyro reports most ValueErrors of a config's `__post_init__` as usage errors, but lets some
    through (RunConfig's cross-section checks, built inside gptlab train's TrainArgs). Those are
    rejected values too, so they become UsageErrors here."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return tyro.cli(cls, args=list(args), prog=prog, default=default, **kw)
    except SystemExit as e:
        if e.code in (0, None):  # --help
            raise
        raise UsageError(f"{_condense(err.getvalue())} (see {prog} --help)") from None
    except ValueError as e:
        raise UsageError(str(e)) from e
