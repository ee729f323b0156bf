"""Metric sinks beside metrics.jsonl: TensorBoard and Weights & Biases.

metrics.jsonl stays the source of truth (always written, read by `gptlab plot` and the ablation
tables); a sink only mirrors its rows to a dashboard. Both backends are optional extras, so
they are imported when a run asks for them, and `build_loggers` fails before step 0 with the
pip command to run, rather than crashing mid-run or silently dropping the metrics.

Tags are the metrics.jsonl field names unchanged, so one table (docs/monitoring.md) explains
the file and both dashboards. Lists (the MoE `moe_load`) become one scalar per index.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gptlab.errors import GptlabError

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # under the run directory
WANDB_DIR = "wandb"  # wandb.init(dir=run_dir) puts its files here

_EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> pyproject extra


class Logger(Protocol):
    """Where metric rows go besides metrics.jsonl."""

    def log(self, row: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics row; lists become `name/0`, `name/1`, ...; `step` and
    non-numbers (strings, None) are left out."""
    out: dict[str, float] = {}
    for name, value in row.items():
        if name == "step":
            continue
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if _is_number(v):
                    out[f"{name}/{i}"] = float(v)
        elif _is_number(value):
            out[name] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _import(module: str, logger: str) -> Any:
    """Import an optional backend, or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise GptlabError(
            f"train.loggers asks for {logger} but it is not installed ({e}); run "
            f"pip install 'gptlab[{_EXTRA[logger]}]' or drop {logger} from --train.loggers"
        ) from None


class TensorBoardLogger:
    """Scalars to `run_dir/tensorboard` through torch's SummaryWriter."""

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        tb = _import("torch.utils.tensorboard", "tensorboard")
        # On resume, hide events a crashed run wrote after its last checkpoint (as
        # metrics.jsonl drops those rows); rows at start_step itself are kept, as there.
        purge = start_step + 1 if start_step > 0 else None
        self.writer = tb.SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge)

    def log(self, row: dict[str, Any], step: int) -> None:
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Rows to a W&B run whose files live in `run_dir/wandb`; offline mode needs no network."""

    def __init__(
        self, run_dir: Path, config: dict[str, Any], project: str, mode: str = "offline"
    ) -> None:
        wandb = _import("wandb", "wandb")
        try:
            self.run = wandb.init(
                project=project,
                name=run_dir.name,
                dir=str(run_dir),
                config=config,
                mode=mode,
                # console="off": W&B would otherwise wrap stdout/stderr to record them, which
                # interleaves with our own log lines; metrics.jsonl already holds the numbers.
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as e:  # wandb raises its own types (no login, bad project, ...)
            raise GptlabError(
                f"could not start a W&B run in {mode} mode ({type(e).__name__}: {e}); for "
                "online mode run `wandb login` first, or use --train.wandb_mode offline"
            ) from None
        if mode == "offline":
            where = Path(self.run.dir).parent  # run.dir is the run's files/ folder
            log.info("W&B offline run in %s (upload later with: wandb sync %s)", where, where)
        else:
            log.info("W&B run: %s", self.run.url)

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(scalars(row), step=step)

    def close(self) -> None:
        self.run.finish()


def build_loggers(
    names: Sequence[str],
    run_dir: Path,
    config: dict[str, Any],
    *,
    start_step: int = 0,
    wandb_project: str = "gptlab",
    wandb_mode: str = "offline",
) -> list[Logger]:
    """The sinks named in `names` (train.loggers), ready to log; raises GptlabError naming the
    pip extra if a backend is missing. `config` is the full run config (shown by W&B)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = []
    try:
        for name in names:
            if name == "tensorboard":
                loggers.append(TensorBoardLogger(run_dir, start_step))
            elif name == "wandb":
                loggers.append(WandbLogger(run_dir, config, wandb_project, wandb_mode))
            else:
                raise GptlabError(f"unknown logger {name!r}; choose tensorboard or wandb")
    except BaseException:
        close_loggers(loggers)  # the ones already open, so a failed start leaks nothing
        raise
    return loggers


def close_loggers(loggers: Sequence[Logger]) -> None:
    """Close every sink, even if one fails (the first error is logged, not raised: the
    metrics are safe in metrics.jsonl)."""
    for logger in loggers:
        try:
            logger.close()
        except Exception:
            log.exception("closing %s failed; metrics.jsonl is complete", type(logger).__name__)
