"""Checkpoints: a directory per checkpoint, written atomically.

    RUN_DIR/latest/  model.safetensors   weights (safetensors: no pickle, safe to share)
                     config.json         {"schema_version": 1, "config": the full RunConfig}
                     optimizer.pt        optimizer state (tensors and numbers only)
                     state.pt            step, best val loss, RNG states, loader state
    RUN_DIR/best/    the same, for the lowest validation loss so far

A checkpoint is written to a temporary directory, its files and the directory are fsynced, and
it is renamed into place. Replacing an existing one moves the old directory aside first
(`.NAME.old`), renames the new one in, fsyncs the parent directory, then deletes the old copy.
A crash between the two renames leaves only the old copy, aside. Readers (`resolve`, and every
load function through it) then read that copy and change nothing on disk, so a reader never
races a writer over a rename; the next `save` repairs the directory. `.pt` files are read with
weights_only=True, so loading never runs arbitrary pickled code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from gptlab.config import from_dict
from gptlab.errors import GptlabError
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT

SCHEMA_VERSION = 2
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.pt"
STATE = "state.pt"


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def resolve(path: Path) -> Path:
    """The directory to read checkpoint `path` from: `path` itself, or the previous copy that a
    save interrupted mid-replace left aside. Reading never renames or deletes anything."""
    path = Path(path)
    old = _aside(path)
    if not path.is_dir() and old.is_dir():
        return old
    return path


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (for a directory: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair(path: Path) -> None:
    """Undo what an interrupted save left: put a copy left aside back if `path` is missing,
    and delete a leftover aside copy and temporary directories."""
    old = _aside(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    shutil.rmtree(old, ignore_errors=True)  # a crash after the swap: the new copy is in place
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def save(
    path: Path,
    model: nn.Module,
    config: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically (see module docstring).

    `weights` is the full state dict when `model` holds only a shard of it (FSDP, gathered
    by train/distributed.py); otherwise the weights are read from `model`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        if weights is None:
            save_model(model, str(tmp / WEIGHTS))  # drops tied duplicates (lm_head == wte)
        else:
            _save_full_state(model, weights, tmp / WEIGHTS)
        doc = {"schema_version": SCHEMA_VERSION, "config": config}
        (tmp / CONFIG).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE)
        for name, src in (extra_files or {}).items():  # e.g. tokenizer.json, to decode samples
            shutil.copyfile(src, tmp / name)
        for f in tmp.iterdir():  # on disk before any rename, so a crash never leaves it partial
            _fsync(f)
        _fsync(tmp)
        if path.exists():
            os.replace(path, _aside(path))
        os.replace(tmp, path)
        _fsync(path.parent)  # the renames themselves
        shutil.rmtree(_aside(path), ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: first name} for each parameter shared under several names, e.g.
    {"lm_head.weight": "wte.weight"} for a tied head. Checkpoints store the first name only."""
    first: dict[int, str] = {}  # id of a parameter -> the first name it appears under
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _save_full_state(model: nn.Module, weights: dict[str, torch.Tensor], file: Path) -> None:
    """Save a gathered state dict as `save_model` would save the whole model: one entry per
    tied group (the first name, e.g. wte.weight for lm_head.weight), contiguous tensors."""
    aliases = tied_aliases(model)
    tensors = {k: v.contiguous() for k, v in weights.items() if k not in aliases}
    save_file(tensors, str(file), metadata={"format": "pt"})


def snapshot(run_dir: Path, name: str, step: int, keep: int) -> Path:
    """Hard-link checkpoint `name` as step_NNNNNNN/ and delete all but the `keep` newest
    snapshots. Checkpoint files are only ever replaced, never rewritten in place, so a link
    keeps its step's version when `name` moves on."""
    src = resolve(run_dir / name)
    dst = run_dir / f"step_{step:07d}"
    if not dst.exists():
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{dst.name}.tmp-"))
        try:
            for f in src.iterdir():
                os.link(f, tmp / f.name)
            _fsync(tmp)
            os.replace(tmp, dst)
            _fsync(run_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(run_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def migrate(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bring an older config.json up to SCHEMA_VERSION (the one place migrations live)."""
    version = doc.get("schema_version")
    if version == 1:  # v1 (gptlab 0.1) had no vocabulary padding; every other new field
        model = doc.get("config", {}).get("model", {})  # defaults to the v1 behaviour
        model.setdefault("vocab_multiple", 1)
        doc["schema_version"] = version = 2
    if version != SCHEMA_VERSION:
        raise GptlabError(
            f"{path / CONFIG} has schema version {version}, this gptlab reads {SCHEMA_VERSION}; "
            "upgrade gptlab or re-export the checkpoint"
        )
    return doc


def load_config(path: Path) -> dict[str, Any]:
    """The full run config dict stored in a checkpoint."""
    path = resolve(Path(path))
    if not path.is_dir():
        raise GptlabError(f"no checkpoint at {path}; train one first with gptlab train")
    try:
        doc = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GptlabError(f"checkpoint {path} has no readable {CONFIG} ({e})") from None
    return migrate(doc, path)["config"]


def _weights_file(path: Path) -> Path:
    file = resolve(Path(path)) / WEIGHTS
    if not file.is_file():
        raise GptlabError(f"checkpoint {path} has no {WEIGHTS}")
    return file


def _corrupt(file: Path, e: Exception) -> GptlabError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return GptlabError(
        f"{file} is corrupt or truncated ({first}); use another checkpoint (e.g. best/) or retrain"
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full weights stored in checkpoint `path`, by name, on the CPU (a tied group under
    its first name only; see `tied_aliases`)."""
    file = _weights_file(path)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise _corrupt(file, e) from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load model.safetensors into `model` strictly, with one clear error if it is damaged."""
    file = _weights_file(path)
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise _corrupt(file, e) from None
    if missing or unexpected:
        raise GptlabError(
            f"{file} does not match the model in its config.json (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); the checkpoint is damaged"
        )


def load_model_from_checkpoint(path: Path, device: torch.device | str = "cpu") -> GPT:
    """Rebuild the model from the checkpoint's stored ModelConfig and load its weights."""
    config = load_config(path)
    try:
        model_cfg = from_dict(ModelConfig, config["model"], prefix="model.")
    except (KeyError, ValueError) as e:
        raise GptlabError(f"checkpoint {path} has an invalid model config ({e})") from None
    model = GPT(model_cfg)
    load_weights(model, path)
    return model.to(device)


def load_pt(path: Path, name: str) -> dict[str, Any]:
    """Read optimizer.pt or state.pt with weights_only=True (no arbitrary unpickling)."""
    file = resolve(Path(path)) / name
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise GptlabError(
            f"{file} is missing or corrupt ({type(e).__name__}); cannot resume from this checkpoint"
        ) from None
