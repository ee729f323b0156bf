"""LoRA in the training loop: which weights train, and what a LoRA run's checkpoint holds.

With `lora.rank` > 0 the model is built as usual, its base weights come from `--init-from`,
and `model/lora.py` wraps the targeted linear layers with adapters and freezes everything
else, so the optimizer (and its state: the memory LoRA saves) holds only the adapters. A
checkpoint then stores only the adapters, plus `lora_base.json`: the base it was trained on and
the sha256 of the base's weight file, so a base that changed since is refused, not silently
combined with adapters that were trained for other weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.errors import ConfigError, GptlabError
from gptlab.infer.load import LORA_BASE, weights_hash
from gptlab.model.lora import apply_lora
from gptlab.runtime import Runtime
from gptlab.train.config import RunConfig

log = logging.getLogger(__name__)


def check_lora(cfg: RunConfig, runtime: Runtime) -> None:
    """Refuse a LoRA run that has nothing to adapt or cannot run here, before any work."""
    if not cfg.lora.enabled:
        return
    if not cfg.train.init_from:
        raise ConfigError(
            "--lora.rank trains adapters on top of a trained model's frozen weights; give the "
            "base with --init-from RUN_DIR or hf:DIR (or drop --lora.rank to train every weight)"
        )
    if runtime.distributed and cfg.train.strategy == "fsdp":
        raise ConfigError(
            "LoRA with --train.strategy fsdp is not supported (the adapters are tiny: the "
            "frozen base replicates fine); use --train.strategy ddp"
        )


def check_base_shapes(cfg: RunConfig, base_cfg: Any) -> None:
    """A LoRA checkpoint holds only adapters, so every other weight must be the base's own:
    a longer context with learned positions would add position rows that are never saved."""
    if cfg.model.pos_emb == "learned" and cfg.model.seq_len != base_cfg.seq_len:
        raise ConfigError(
            f"LoRA keeps the base's weights, but --model.seq_len {cfg.model.seq_len} changes "
            f"its learned position table ({base_cfg.seq_len} rows); keep seq_len "
            f"{base_cfg.seq_len}, or finetune every weight (no --lora.rank)"
        )


def add_adapters(model: nn.Module, cfg: RunConfig) -> None:
    """Wrap the targeted layers with fresh adapters (seeded by train.seed), freeze the rest."""
    generator = torch.Generator().manual_seed(cfg.train.seed)
    try:
        names = apply_lora(model, cfg.lora, generator=generator)
    except ValueError as e:
        raise ConfigError(f"lora.targets: {e}") from None
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "LoRA rank %d on %d layers: %s of %s parameters train (%.2f%%)",
        cfg.lora.rank, len(names), f"{trained:,}", f"{total:,}", 100 * trained / total,
    )  # fmt: skip


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs the optimizer updates: all of them, or LoRA's adapters."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def base_record(cfg: RunConfig) -> dict[str, Any]:
    """The base a LoRA run trains on: its spec and the sha256 of its weights."""
    return {"init_from": cfg.train.init_from, "weights_sha256": weights_hash(cfg.train.init_from)}


def write_base_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = run_dir / LORA_BASE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def check_base(checkpoint_dir: Path, record: dict[str, Any]) -> None:
    """A resumed LoRA run must find the base its adapters were trained on."""
    try:
        stored = json.loads((checkpoint_dir / LORA_BASE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GptlabError(
            f"{checkpoint_dir} is a LoRA checkpoint without a readable {LORA_BASE} ({e}); "
            "it cannot be resumed"
        ) from None
    if stored.get("weights_sha256") != record["weights_sha256"]:
        raise GptlabError(
            f"the base model {record['init_from']} changed since {checkpoint_dir} was trained "
            f"on it (sha256 {str(stored.get('weights_sha256'))[:12]}... then, "
            f"{record['weights_sha256'][:12]}... now); restore the original base weights"
        )
