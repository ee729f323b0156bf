"""What a run reports: one JSON row per log or eval line in metrics.jsonl (and TensorBoard/W&B),
and the matching console lines.

Only the main rank writes. The sinks are built before step 0, so a requested logger that is not
installed fails before any training time is spent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gptlab.train.loggers import build_loggers, close_loggers

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


class MetricsLog:
    """metrics.jsonl plus the optional sinks; `record(row)` writes a row to all of them."""

    def __init__(
        self,
        run_dir: Path,
        loggers: tuple[str, ...],
        config: dict[str, Any],
        *,
        start_step: int,
        wandb_project: str,
        wandb_mode: str,
        enabled: bool,  # False on every rank but the main one
    ) -> None:
        self.history: list[dict[str, Any]] = []  # the rows written by this process
        self.sinks = (
            build_loggers(
                loggers,
                run_dir,
                config,
                start_step=start_step,
                wandb_project=wandb_project,
                wandb_mode=wandb_mode,
            )
            if enabled
            else []
        )
        self.file = open(run_dir / METRICS, "a", encoding="utf-8") if enabled else None  # noqa: SIM115

    def record(self, row: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.history.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for sink in self.sinks:
            sink.log(row, step=row["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        close_loggers(self.sinks)


def log_step(row: dict[str, Any], max_steps: int, train_time_s: float = 0, max_seconds: float = 0):
    """The console line of a training-log row. Under a time budget (max_seconds), progress and
    ETA are by training time, which ends the run, not by steps."""
    done = row["step"]
    if max_seconds:
        goal, fraction = f"{max_seconds:g}s", min(1.0, train_time_s / max_seconds)
        eta = max(0.0, max_seconds - train_time_s)
    else:
        goal, fraction = str(max_steps), done / max_steps
        eta = (max_steps - done) * row["ms_per_step"] / 1e3
    log.info(
        "step %5d/%s (%3.0f%%) | loss %.4f | lr %.2e | gnorm %.3f | %.1f ms/step | "
        "%.0f tok/s | mfu %.1f%% | elapsed %.0fs, eta %.0fs",
        done,
        goal,
        100 * fraction,
        row["train_loss"],
        row["lr"],
        row["grad_norm"],
        row["ms_per_step"],
        row["tokens_per_s"],
        100 * row["mfu"],
        row["elapsed_s"],
        eta,
    )


def log_eval(row: dict[str, Any], is_best: bool) -> None:
    """The console line of an eval row."""
    log.info(
        "eval step %d | train %.4f | val %.4f | val bpb %.4f%s",
        row["step"],
        row["train_eval_loss"],
        row["val_loss"],
        row["val_bpb"],
        " (best)" if is_best else "",
    )
    shown = [
        f"{k.removeprefix('eval/')} {v:.4f}"
        for k, v in row.items()
        if k.startswith("eval/") and not k.endswith("_stderr")
    ]
    if shown:
        log.info("eval step %d | %s | %.1fs", row["step"], " | ".join(shown), row["eval_tasks_s"])
