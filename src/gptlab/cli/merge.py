"""`gptlab merge RUN_DIR --out DIR`: fold a LoRA run's adapters into a plain run directory.

A LoRA checkpoint holds only its adapters and a reference to its base (infer/load.py). Merging
writes W + (alpha/r) B A for every adapted layer, tensor by tensor, into an ordinary checkpoint:

    DIR/latest/  model.safetensors (the merged weights), config.json, the tokenizer files
    DIR/best/    the same files (hard links), so `gptlab sample DIR` finds its default
    DIR/config.json

The config is the run's own with the lora section back to its defaults (the sft section, which
records the chat template, and everything else kept). The base is checked against the hash the
run recorded, as for every use of a LoRA run. The output is written into a temporary folder
and renamed into place: never half-written, and nothing is ever overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab import checkpoint
from gptlab.cli.common import parse
from gptlab.cli.export import write_atomically, write_checkpoint
from gptlab.config import to_dict
from gptlab.errors import ConfigError
from gptlab.infer.load import (
    checkpoint_dir,
    hf_folder,
    is_lora_checkpoint,
    open_weights,
    read_lora_base,
)
from gptlab.model.config import LoRAConfig

TOKENIZER_FILES = ("tokenizer.json", "ranks.tiktoken", "hf_tokenizer.json")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MergeArgs:
    """Fold a LoRA run's adapters into its base: a plain run directory."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """LoRA run directory written by gptlab train --lora.rank R (or a checkpoint inside it)."""
    out: str
    """Run directory to write; must not exist yet or be empty (nothing is ever overwritten)."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of the run to merge."""


def _lora_checkpoint(spec: str, which: str) -> Path:
    """The LoRA checkpoint to merge, or a ConfigError saying why there is none."""
    if hf_folder(spec) is not None or not Path(spec).exists():
        raise ConfigError(f"no run directory at {spec}; give a LoRA run written by gptlab train")
    path = checkpoint_dir(Path(spec), which)
    if not is_lora_checkpoint(path):
        raise ConfigError(
            f"{path} has no LoRA adapters (it is a full model already); gptlab merge folds "
            "the adapters of a run trained with --lora.rank R"
        )
    return path


def _fill(path: Path, tmp: Path) -> None:
    source = open_weights(path)  # checks the base's hash, merges tensor by tensor
    config = dict(source.config)
    config["lora"] = to_dict(LoRAConfig())
    latest, best = tmp / "latest", tmp / "best"
    latest.mkdir()
    carried = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    write_checkpoint(dataclasses.replace(source, tokenizer=None if carried else source.tokenizer),
                     latest, config)  # fmt: skip
    for name in carried:
        shutil.copyfile(path / name, latest / name)
    best.mkdir()
    for f in latest.iterdir():
        os.link(f, best / f.name)
    (tmp / checkpoint.CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def run(argv: list[str]) -> int:
    args = parse(MergeArgs, argv, prog="gptlab merge")
    out = Path(args.out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty; choose a new --out (nothing written)")
    path = _lora_checkpoint(args.run_dir, args.checkpoint)
    if out.exists():
        out.rmdir()  # empty: replaced by the merged run in one rename
    write_atomically(out, lambda tmp: _fill(path, tmp))
    base = read_lora_base(path)["init_from"]
    print(f"merged the LoRA adapters of {path} into {base} -> {out} (gptlab sample {out})")
    return 0
