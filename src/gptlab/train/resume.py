"""What a checkpoint's state.pt restores beyond weights and optimizer: RNG states, the loader
position of each rank, and the metrics rows a crashed run wrote after its last checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import GptlabError
from gptlab.runtime import Runtime
from gptlab.train.config import TrainConfig

log = logging.getLogger(__name__)


def rng_state(runtime: Runtime) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def set_rng_state(state: dict[str, Any], runtime: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def rewrite_metrics_until(path: Path, step: int) -> None:
    """Drop metric rows past `step` (written by a run that crashed after its last checkpoint),
    and a last row the crash cut off mid-write."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written row of the killed process
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept))
    tmp.replace(path)


def sequences_per_step(tc: TrainConfig, step: int, seq_len: int, world_size: int) -> int:
    """Sequences over all ranks in optimizer step `step` (stages included)."""
    B, _, accum = tc.shape_at(step, seq_len, world_size)
    return B * accum * world_size


def restore_loader(loader: Any, state: dict[str, Any], kind: str, runtime: Runtime) -> None:
    """Each rank's loader position; a world-size-independent loader takes rank 0's."""
    saved = state["loader"]
    if saved.get("kind", "random") != kind:
        raise GptlabError(
            f"--resume cannot change data.loader: the checkpoint used "
            f"{saved.get('kind', 'random')!r}; drop the override"
        )
    ranks = saved.get("ranks") or [{k: v for k, v in saved.items() if k != "kind"}]
    if len(ranks) == runtime.world_size:
        mine = ranks[runtime.rank]
    elif loader.world_size_independent:
        mine = ranks[0]
    else:
        raise GptlabError(
            f"this checkpoint was written by {len(ranks)} processes and the {kind} loader's "
            f"position belongs to them; resume with {len(ranks)} processes in all (torchrun), "
            "or start a new run"
        )
    try:
        loader.load_state_dict(mine)
    except (KeyError, ValueError) as e:
        raise GptlabError(f"cannot restore the data position from the checkpoint: {e}") from None


@dataclasses.dataclass
class Progress:
    """Where a run is: what a checkpoint's state.pt records besides weights and RNG."""

    step: int = 0  # optimizer steps done
    best_val_loss: float = math.inf
    micro_batches: int = 0  # micro-batches over all ranks so far (seeds data and dropout)
    tokens: int = 0  # training tokens over all ranks so far
    train_time_s: float = 0.0  # seconds spent in optimizer steps so far (evals excluded)


def restore_progress(
    state: dict[str, Any], tc: TrainConfig, seq_len: int, runtime: Runtime
) -> Progress:
    """The Progress of a checkpoint, with the fields older files lack derived from its step."""
    step, W = state["step"], runtime.world_size
    saved_world = state.get("world_size", 1)
    B0, T0, accum0 = tc.shape_at(0, seq_len, saved_world)
    saved_micro = step * accum0 * saved_world
    if saved_world != W:
        log.info("resuming a %d-process run on %d processes", saved_world, W)
    before, (B1, _, accum1) = state.get("sequences_per_step"), tc.shape_at(step - 1, seq_len, W)
    if before is not None and before != B1 * accum1 * W and runtime.is_main_rank:
        log.warning(
            "the global batch changes from %d to %d sequences per step on resume; set "
            "--train.global_batch_size %d to keep it",
            before,
            B1 * accum1 * W,
            before,
        )
    stored_max = state.get("max_steps")
    if stored_max is not None and stored_max != tc.max_steps and runtime.is_main_rank:
        log.warning(
            "--train.max_steps changes from %d to %d on resume: the learning-rate schedule "
            "(warm-up, decay) is recomputed over %d steps from step %d on, so the run no longer "
            "matches an uninterrupted %d-step run",
            stored_max,
            tc.max_steps,
            tc.max_steps,
            step,
            stored_max,
        )
    return Progress(
        step=step,
        best_val_loss=state["best_val_loss"],
        micro_batches=state.get("micro_batches", saved_micro),
        tokens=state.get("tokens", saved_micro * B0 * T0),
        train_time_s=state.get("train_time_s", 0.0),
    )
