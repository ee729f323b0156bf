"""`gptlab train`: build the run config (preset -> config file -> flags), validate, summarise,
train.

The config is resolved in three layers, each overriding the last: a preset (a Python function
in gptlab.presets), an optional YAML/JSON file, then dotted flags such as --model.n_layer 4.
With --resume the base is the config stored in the run's latest checkpoint instead of a preset.
Nothing is printed until the config and the device are validated, so a mistake prints only its
one error line; then a few summary lines (the full config goes to RUN_DIR/config.json).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Annotated

import torch
import tyro

from gptlab import checkpoint
from gptlab.cli.common import UsageError, locations, parse, setup_logging, torchrun_launch
from gptlab.config import from_dict, load_file, merge
from gptlab.errors import ConfigError, GptlabError
from gptlab.model.accounting import build_meta, count_params
from gptlab.presets import get_preset
from gptlab.runtime import Runtime, close_runtime, make_runtime
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
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--preset", default="")
    pre.add_argument("--config", default="")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--train.out_dir", dest="out_dir", default="")
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError as e:  # e.g. --preset with no name after it
        raise UsageError(f"{e} (see gptlab train --help)") from None

    file_overrides = load_file(known.config) if known.config else {}
    if known.resume and not known.preset:
        file_train = file_overrides.get("train")
        file_out_dir = file_train.get("out_dir") if isinstance(file_train, dict) else None
        out_dir = Path(
            known.out_dir
            or (file_out_dir if isinstance(file_out_dir, str) else "")
            or get_preset(_default_preset()[0]).train.out_dir
        )
        try:
            base = from_dict(RunConfig, checkpoint.load_config(out_dir / "latest"))
        except ConfigError as e:
            raise GptlabError(f"{out_dir / 'latest'} holds an invalid config ({e})") from None
        note = f"resuming {out_dir} with its stored config"
    elif known.preset:
        base, note = get_preset(known.preset), f"preset {known.preset}"
    else:
        name, why = _default_preset()
        base, note = get_preset(name), f"no --preset given: using {name} ({why})"
    if file_overrides:
        try:
            base = merge(base, file_overrides)
        except ConfigError as e:
            raise ConfigError(f"config file {known.config}: {e}") from None
    default = TrainArgs(preset=known.preset, config=known.config, resume=known.resume, run=base)
    args = parse(TrainArgs, argv, prog="gptlab train", default=default, use_underscores=True)
    return args.run, args.resume, note


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def summary(cfg: RunConfig, runtime: Runtime, note: str) -> list[str]:
    """The few lines printed before a run: where the config came from, the model's size, the
    data, the device and dtype, and the run directory. `cfg` is the config the run trains, with
    the vocabulary of the data's tokenizer."""
    m, counts = cfg.model, count_params(build_meta(cfg.model))
    active = f" ({_count(counts.active)} active)" if counts.active != counts.total else ""
    run_dir = Path(cfg.train.out_dir)
    dtype = str(runtime.compute_dtype).removeprefix("torch.")
    ranks = f", {runtime.world_size} processes" if runtime.distributed else ""
    steps = cfg.train.max_steps
    return [
        note,
        f"  model   {_count(counts.total)} parameters{active}: {m.n_layer} layers x {m.n_embd} "
        f"wide, {m.n_head} heads, context {m.seq_len}, vocab {m.vocab_size}",
        f"  data    {cfg.data.dataset}, tokenizer {cfg.data.tokenizer}",
        f"  train   {steps:,} step{'s' if steps != 1 else ''}, {cfg.optim.name} lr "
        f"{cfg.optim.lr:g}",
        f"  device  {runtime.device}, compute dtype {dtype}{ranks}",
        f"  out     {run_dir} (full config: {run_dir / 'config.json'})",
    ]


def run(argv: list[str]) -> int:
    cfg, resume, note = build_config(argv)
    launch = torchrun_launch()  # a single process unless started by torchrun
    main_rank = launch.rank == 0
    setup_logging(quiet=not main_rank)
    runtime = make_runtime(cfg.train.device, cfg.train.dtype, launch, tf32=cfg.train.tf32)
    try:

        def announce(
            final: RunConfig,
        ) -> None:  # after every check: a refused run prints only its error
            if main_rank:
                print("\n".join(summary(final, runtime, note)), flush=True)

        result = train(cfg, runtime, locations(), resume=resume, on_start=announce)
    finally:
        close_runtime(runtime)
    if main_rank:
        print(
            f"best val loss {result.best_val_loss:.4f} in {result.elapsed_s:.1f}s; "
            f"checkpoints in {result.run_dir} (sample with: gptlab sample {result.run_dir})"
        )
    return 0
