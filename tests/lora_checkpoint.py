"""Tiny base runs and LoRA runs on disk, written as `gptlab train` writes them: a LoRA
checkpoint holds only the adapters (checkpoint.save(..., weights=adapter_state(model))), its
config (lora.rank > 0, train.init_from = the base) and lora_base.json (the base's spec and hash).
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import torch

from gptlab import checkpoint
from gptlab.config import to_dict
from gptlab.data.config import SFTConfig
from gptlab.infer.load import LORA_BASE, weights_hash
from gptlab.model.config import LoRAConfig, ModelConfig
from gptlab.model.gpt import GPT
from gptlab.model.lora import adapter_state, apply_lora
from gptlab.tokenizer.char import CharTokenizer
from gptlab.train.config import RunConfig

CHARS = string.ascii_lowercase + " .,!?\n"  # 32 characters: the tiny models' vocabulary


def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig(
        **{"n_layer": 2, "n_head": 2, "n_embd": 32, "seq_len": 16, "vocab_size": len(CHARS), **kw}
    )


def write_base_run(run_dir: Path, cfg: ModelConfig, seed: int = 0) -> GPT:
    """A run directory with best/ and latest/ (weights, config, char tokenizer), random weights."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    tok_dir = run_dir / "tok"
    CharTokenizer(list(CHARS)).save(tok_dir)
    config = to_dict(RunConfig(model=cfg))
    for name in ("latest", "best"):
        checkpoint.save(run_dir / name, model, config, extra_files=_tokenizer(tok_dir))
    return model


def _tokenizer(tok_dir: Path) -> dict[str, Path]:
    return {"tokenizer.json": tok_dir / "tokenizer.json"}


def lora_model(base: GPT, lora: LoRAConfig, seed: int = 1) -> GPT:
    """A copy of `base` with adapters whose A and B are random (a fresh B is zero)."""
    model = GPT(base.cfg)
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    apply_lora(model, lora, generator=g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def write_lora_run(
    run_dir: Path, base_spec: str, base: GPT, lora: LoRAConfig, sft: SFTConfig | None = None
) -> GPT:
    """A LoRA run on `base` (saved at `base_spec`) with random adapters; returns its model."""
    model = lora_model(base, lora)
    cfg = RunConfig(model=base.cfg, lora=lora, sft=sft or SFTConfig())
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=base_spec))
    run_dir.mkdir(parents=True)
    record = {"init_from": base_spec, "weights_sha256": weights_hash(base_spec)}
    (run_dir / LORA_BASE).write_text(json.dumps(record, indent=2) + "\n")
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    CharTokenizer(list(CHARS)).save(run_dir / "tok")
    extra = {**_tokenizer(run_dir / "tok"), LORA_BASE: run_dir / LORA_BASE}
    for name in ("latest", "best"):
        checkpoint.save(
            run_dir / name, model, to_dict(cfg), weights=adapter_state(model), extra_files=extra
        )
    return model
