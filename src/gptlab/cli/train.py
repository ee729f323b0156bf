"""`gptlab train`: build the run config (preset -> config file -> flags), validate, print, train.

The config is resolved in three layers, each overriding the last: a preset (a Python function
in gptlab.presets), an optional YAML/JSON file, then dotted flags such as --model.n_layer 4.
With --resume the base is the config stored in the run's latest checkpoint instead of a preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Annotated

import torch
import tyro

from gptlab import checkpoint
from gptlab.cli.common import locations, parse, setup_logging, torchrun_launch
from gptlab.config import from_dict, load_file, merge, to_dict
from gptlab.presets import get_preset
from gptlab.runtime import close_runtime, make_runtime
from gptlab.train.config import RunConfig
from gptlab.train.loop import train


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """Train a GPT. With no arguments: Shakespeare, char-level, sized for this machine."""

    preset: str = ""
    """Preset to start from (default: shakespeare_char on a GPU, shakespeare_char_cpu
    otherwise). All presets: gptlab info --help."""
    config: str = ""
    """YAML or JSON file whose fields override the preset (same names as the flags)."""
    resume: bool = False
    """Continue the run in --train.out_dir from its latest checkpoint."""
    run: Annotated[RunConfig, tyro.conf.arg(name="")] = RunConfig()


def _default_preset() -> tuple[str, str]:
    if torch.cuda.is_available():
        return "shakespeare_char", "a CUDA GPU is available"
    return "shakespeare_char_cpu", "no CUDA GPU found"


def build_config(argv: list[str]) -> tuple[RunConfig, bool, str]:
    """Resolve the RunConfig from the command line; returns (config, resume, how it was chosen)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="")
    pre.add_argument("--config", default="")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--train.out_dir", dest="out_dir", default="")
    known, _ = pre.parse_known_args(argv)

    file_overrides = {}
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise ValueError(f"--config file {path} does not exist")
        file_overrides = load_file(path)
    if known.resume and not known.preset:
        out_dir = Path(
            known.out_dir
            or file_overrides.get("train", {}).get("out_dir")
            or get_preset(_default_preset()[0]).train.out_dir
        )
        base = from_dict(RunConfig, checkpoint.load_config(out_dir / "latest"))
        note = f"resuming {out_dir} with its stored config"
    elif known.preset:
        base, note = get_preset(known.preset), f"preset {known.preset}"
    else:
        name, why = _default_preset()
        base, note = get_preset(name), f"no --preset given: using {name} ({why})"
    if file_overrides:
        base = merge(base, file_overrides)
    default = TrainArgs(preset=known.preset, config=known.config, resume=known.resume, run=base)
    args = parse(TrainArgs, argv, prog="gptlab train", default=default, use_underscores=True)
    return args.run, args.resume, note


def run(argv: list[str]) -> int:
    cfg, resume, note = build_config(argv)
    launch = torchrun_launch()  # a single process unless started by torchrun
    main_rank = launch.rank == 0
    setup_logging(quiet=not main_rank)
    if main_rank:
        print(note)
        for section, values in to_dict(cfg).items():
            print(f"  {section}: {json.dumps(values)}")
    runtime = make_runtime(cfg.train.device, cfg.train.dtype, launch, tf32=cfg.train.tf32)
    try:
        result = train(cfg, runtime, locations(), resume=resume)
    finally:
        close_runtime(runtime)
    if main_rank:
        print(
            f"best val loss {result.best_val_loss:.4f} in {result.elapsed_s:.1f}s; "
            f"checkpoints in {result.run_dir} (sample with: gptlab sample {result.run_dir})"
        )
    return 0
