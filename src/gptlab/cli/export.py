"""`gptlab export RUN_DIR --weights-only --out DIR`: a small inference checkpoint.

A training checkpoint carries optimizer moments (twice the weights for AdamW) and trainer state
needed only to resume. The export keeps what inference needs: `model.safetensors`,
`config.json` and the tokenizer files. It loads like any checkpoint (`gptlab sample DIR`).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab import checkpoint
from gptlab.cli.common import parse
from gptlab.errors import GptlabError

INFERENCE_FILES = (checkpoint.WEIGHTS, checkpoint.CONFIG)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportArgs:
    """Write a weights-only copy of a run's checkpoint for inference and sharing."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory written by gptlab train (or a checkpoint directory inside it)."""
    out: str
    """Directory to write; must not exist yet (nothing is ever overwritten)."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of the run to export."""
    weights_only: bool = True
    """Leave out optimizer and trainer state (the only mode: a full copy is just `cp -r`)."""


def run(argv: list[str]) -> int:
    args = parse(ExportArgs, argv, prog="gptlab export")
    src = Path(args.run_dir)
    if not (src / checkpoint.WEIGHTS).is_file():  # a run directory, not a checkpoint itself
        src = checkpoint.resolve(src / args.checkpoint)
    if not (src / checkpoint.WEIGHTS).is_file() or not (src / checkpoint.CONFIG).is_file():
        raise GptlabError(f"{args.run_dir} holds no {args.checkpoint}/ checkpoint to export")
    out = Path(args.out)
    if out.exists():
        raise GptlabError(f"{out} already exists; choose a new --out (nothing was overwritten)")
    checkpoint.load_model_from_checkpoint(src)  # refuse to export a corrupt checkpoint
    tokenizer = [p.name for p in src.iterdir() if p.name in ("tokenizer.json", "ranks.tiktoken")]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        for name in (*INFERENCE_FILES, *tokenizer):
            shutil.copyfile(src / name, tmp / name)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.iterdir())
    full = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    print(f"exported {src} -> {out}: {size / 1e6:.1f} MB (the checkpoint was {full / 1e6:.1f} MB)")
    return 0
