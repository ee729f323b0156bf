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
import json
from pathlib import Path
from typing import Annotated

import torch
import tyro

from gptlab import checkpoint
from gptlab.cli.common import UsageError, locations, parse, setup_logging, torchrun_launch
from gptlab.config import from_dict, load_file, merge
from gptlab.errors import ConfigError, GptlabError
from gptlab.infer.load import HF_PREFIX, open_weights
from gptlab.model.accounting import build_meta, count_params
from gptlab.presets import get_preset
from gptlab.runtime import Runtime, close_runtime, make_runtime
from gptlab.scale.auto import AUTO_FILE, Derivation, derive
from gptlab.scale.config import AutoConfig
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
    init_from: str = ""
    """Start from the weights of a run directory or hf:DIR (a Hugging Face model folder): the
    model section becomes the source's, optimizer and step start fresh (docs/interop.md)."""
    run: Annotated[RunConfig, tyro.conf.arg(name="")] = RunConfig()
    auto: AutoConfig = AutoConfig()
    """Size the run from one dial, --auto.depth D (docs/scaling.md); flags still win."""


def _default_preset() -> tuple[str, str]:
    if torch.cuda.is_available():
        return "shakespeare_char", "a CUDA GPU is available"
    return "shakespeare_char_cpu", "no CUDA GPU found"


def build_config(argv: list[str]) -> tuple[RunConfig, bool, str]:
    """Resolve the RunConfig from the command line; returns (config, resume, how it was chosen)."""
    args, note = parse_args(argv)
    return args.run, args.resume, note


def parse_args(
    argv: list[str], prog: str = "gptlab train", **help_kw: str
) -> tuple[TrainArgs, str]:
    """The parsed command line and a note on where its config came from."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--preset", default="")
    pre.add_argument("--config", default="")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--init-from", "--init_from", "--train.init_from", dest="init_from")
    pre.add_argument("--train.out_dir", dest="out_dir", default="")
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError as e:  # e.g. --preset with no name after it
        raise UsageError(f"{e} (see gptlab train --help)") from None

    if known.init_from and known.resume:
        raise UsageError(
            "--init-from starts a new run from another model's weights and --resume continues "
            "this run from its own; give one of them"
        )
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
    if known.init_from:
        known.init_from = absolute_source(known.init_from)  # found again from any directory
        source = open_weights(known.init_from).cfg  # the architecture comes from the source
        base = dataclasses.replace(
            base,
            model=source,
            train=dataclasses.replace(base.train, init_from=known.init_from),
        )
        note = f"{note}, initialised from {known.init_from}"
    if file_overrides:
        try:
            base = merge(base, file_overrides)
        except ConfigError as e:
            raise ConfigError(f"config file {known.config}: {e}") from None
    default = TrainArgs(preset=known.preset, config=known.config, resume=known.resume, run=base)
    args = parse(TrainArgs, argv, prog=prog, default=default, use_underscores=True, **help_kw)
    if args.init_from:  # the run records where its weights came from
        init_from = absolute_source(args.init_from)
        args = dataclasses.replace(
            args,
            init_from=init_from,
            run=dataclasses.replace(
                args.run, train=dataclasses.replace(args.run.train, init_from=init_from)
            ),
        )
    return args, note


def build_auto_config(
    argv: list[str], prog: str = "gptlab train", **help_kw: str
) -> tuple[RunConfig, bool, str, Derivation | None]:
    """build_config, then --auto.*: derive the config from the dial (seeing every other flag),
    and parse the flags again over it, so an explicit --optim.lr still overrides the derived."""
    args, note = parse_args(argv, prog, **help_kw)
    cfg, resume = args.run, args.resume
    if not args.auto.enabled:
        if args.auto != AutoConfig():
            raise UsageError("--auto.* settings need --auto.depth D (the number of blocks)")
        return cfg, resume, note, None
    if resume:
        raise UsageError(
            "--resume continues with the run's stored config; drop the --auto.* flags "
            "(the derived values are already in its config.json)"
        )
    derivation = derive(cfg, args.auto)
    default = dataclasses.replace(args, run=derivation.config)
    final = parse(TrainArgs, argv, prog=prog, default=default, use_underscores=True, **help_kw).run
    lines = derivation.to_dict(final)["derived"]
    shown = [
        f"    {line}" + (f"  [flag: {row['overridden_by']}]" if "overridden_by" in row else "")
        for line, row in zip(derivation.lines(), lines, strict=True)
    ]
    note = f"{note}, sized by --auto.depth {args.auto.depth}:\n" + "\n".join(shown)
    return final, resume, note, derivation


def _save_auto(derivation: Derivation, cfg: RunConfig) -> None:
    """RUN_DIR/auto.json: the dial, each derived value and its reason (written, then renamed)."""
    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{AUTO_FILE}.tmp"
    tmp.write_text(json.dumps(derivation.to_dict(cfg), indent=2) + "\n")
    tmp.replace(run_dir / AUTO_FILE)


def absolute_source(spec: str) -> str:
    """A run directory or hf:DIR as an absolute path, so a run (a LoRA run's checkpoints
    above all) finds its base again from any working directory."""
    if spec.startswith(HF_PREFIX):
        return HF_PREFIX + str(Path(spec[len(HF_PREFIX) :]).expanduser().resolve())
    return str(Path(spec).expanduser().resolve())


def _data_line(cfg: RunConfig) -> str:
    if not cfg.sft.enabled:
        return f"  data    {cfg.data.dataset}, tokenizer {cfg.data.tokenizer}"
    batching = "packed" if cfg.sft.packing else "padded per batch"
    return f"  data    conversations {cfg.sft.data} ({cfg.sft.template} template, {batching})"


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
    lora = (
        [f"  lora    rank {cfg.lora.rank} adapters on {cfg.lora.targets}; the base is frozen"]
        if cfg.lora.enabled
        else []
    )
    return [
        note,
        f"  model   {_count(counts.total)} parameters{active}: {m.n_layer} layers x {m.n_embd} "
        f"wide, {m.n_head} heads, context {m.seq_len}, vocab {m.vocab_size}",
        _data_line(cfg),
        f"  train   {steps:,} step{'s' if steps != 1 else ''}, {cfg.optim.name} lr "
        f"{cfg.optim.lr:g}",
        *lora,
        f"  device  {runtime.device}, compute dtype {dtype}{ranks}",
        f"  out     {run_dir} (full config: {run_dir / 'config.json'})",
    ]


def run(argv: list[str], prog: str = "gptlab train", **help_kw: str) -> int:
    """`gptlab train` (or `gptlab sft`, which passes its own prog and description)."""
    cfg, resume, note, derivation = build_auto_config(argv, prog, **help_kw)
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
                if derivation is not None:
                    _save_auto(derivation, final)

        result = train(cfg, runtime, locations(), resume=resume, on_start=announce)
    finally:
        close_runtime(runtime)
    if main_rank:
        print(
            f"best val loss {result.best_val_loss:.4f} in {result.elapsed_s:.1f}s; "
            f"checkpoints in {result.run_dir} (sample with: gptlab sample {result.run_dir})"
        )
    return 0
