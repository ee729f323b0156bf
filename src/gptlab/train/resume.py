"""What a checkpoint's state.pt restores beyond weights and optimizer: RNG states, the loader
position of each rank, and the metrics rows a crashed run wrote after its last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import GptlabError
from gptlab.runtime import Runtime
from gptlab.train.config import TrainConfig


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
    """Drop metric rows past `step` (written by a run that crashed after its last checkpoint)."""
    if not path.exists():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in rows if json.loads(ln).get("step", 0) <= step]
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
