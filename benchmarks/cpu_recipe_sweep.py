"""Benchmark: the default CPU preset's recipe against variants of it, over several seeds.

Each variant is `shakespeare_char_cpu` with some config fields replaced. It trains in-process
through `gptlab.train.loop.train` (the same function `gptlab train` calls), once per seed, and
reports the val loss after its last step. The preset is chosen by its worst seed, not its
mean: in bf16 on a CPU one seed's result also varies a little between processes
(docs/training.md, "The CPU speed record"). This is how the preset's Muon momentum was picked:

    GPTLAB_DATA_DIR=../shared/data python benchmarks/cpu_recipe_sweep.py --seeds 1337 1 2 3 4 \
        --variant 'ramp={"optim.muon_momentum": 0.95, "optim.muon_momentum_start": 0.85,
                         "optim.muon_momentum_warmup_steps": 300}' \
        --variant 'm0.9={"optim.muon_momentum": 0.9, "optim.muon_momentum_start": 0.9}'

`--variant NAME=JSON` maps dotted config fields to values; the preset itself always runs as
`preset`. Output: a setup line (CPU model, flags, threads), one JSON line per run, then a
summary line per variant with every seed's val loss, the mean and the worst.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gptlab.ablate.runner import cpu_model
from gptlab.cli.common import locations
from gptlab.infer.plan import cpu_flags
from gptlab.presets import get_preset
from gptlab.runtime import make_runtime
from gptlab.train.config import RunConfig
from gptlab.train.loop import train

FLAGS_SHOWN = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def with_fields(cfg: RunConfig, fields: dict[str, Any]) -> RunConfig:
    """`cfg` with dotted fields ("optim.muon_lr": 0.03) replaced."""
    for dotted, value in fields.items():
        section, _, name = dotted.partition(".")
        part = getattr(cfg, section, None)
        if not dataclasses.is_dataclass(part) or name not in {
            f.name for f in dataclasses.fields(part)
        }:
            raise SystemExit(f"unknown config field {dotted!r}")
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(part, **{name: value})})
    return cfg


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant takes NAME=JSON, got {text!r}")
    try:
        fields = json.loads(spec)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--variant {name}: not JSON ({e})") from None
    if not isinstance(fields, dict):
        raise SystemExit(f"--variant {name}: give a JSON object of dotted fields")
    return name, fields


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="shakespeare_char_cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2, 3, 4])
    ap.add_argument("--variant", action="append", default=[], type=parse_variant)
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (the CPU preset's auto)")
    a = ap.parse_args()
    logging.disable(logging.INFO)  # one JSON line per run, not the training log
    base = get_preset(a.preset)
    variants = {"preset": {}, **dict(a.variant)}
    flags = cpu_flags()
    print(json.dumps({"cpu": cpu_model(), "flags": [f for f in FLAGS_SHOWN if f in flags],
                      "threads": torch.get_num_threads(), "preset": a.preset,
                      "seeds": a.seeds, "variants": variants}), flush=True)  # fmt: skip
    losses: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:  # seeds outermost: variants take turns, as the machine drifts
            for name, fields in variants.items():
                out = Path(tmp) / "run"
                shutil.rmtree(out, ignore_errors=True)
                cfg = with_fields(base, {**fields, "train.seed": seed, "train.out_dir": str(out)})
                t0 = time.perf_counter()
                result = train(cfg, make_runtime("cpu", a.dtype), locations())
                losses[name].append(result.last_val_loss)
                row = {"variant": name, "seed": seed, "steps": result.step,
                       "val_loss": round(result.last_val_loss, 4),
                       "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
                print(json.dumps(row), flush=True)
    for name, vals in losses.items():
        mean, worst = round(sum(vals) / len(vals), 4), round(max(vals), 4)
        print(json.dumps({"summary": name, "val_losses": [round(v, 4) for v in vals],
                          "mean": mean, "worst": worst}))  # fmt: skip


if __name__ == "__main__":
    main()
