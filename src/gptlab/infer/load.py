"""Load a trained run for inference: the model in its compute dtype, its tokenizer, its config.

`gptlab sample`, `gptlab chat` and `gptlab serve` all start here, so a run directory, a
checkpoint directory inside it and an exported checkpoint are accepted the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from gptlab import checkpoint
from gptlab.errors import GptlabError
from gptlab.infer.engine import cast_for_inference
from gptlab.model.gpt import GPT
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.load import load_tokenizer


@dataclasses.dataclass
class Loaded:
    """A model ready for the engine, with what came with it."""

    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]  # the run's full stored config
    path: Path  # the checkpoint directory read


def checkpoint_dir(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint directory of a run ('best' or 'latest'), or run_dir if it is one."""
    if not run_dir.exists():
        raise GptlabError(f"run directory {run_dir} does not exist; train one with gptlab train")
    if (run_dir / checkpoint.CONFIG).is_file() and (run_dir / checkpoint.WEIGHTS).is_file():
        return run_dir  # a checkpoint directory itself
    path = checkpoint.resolve(run_dir / which)
    if not path.is_dir():
        raise GptlabError(f"{run_dir} has no {which}/ checkpoint; has training reached an eval?")
    return path


def inference_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """'auto' is bf16 on a GPU that supports it and fp32 elsewhere (on a CPU, bf16 matrix-vector
    products are no faster at batch 1 and fp32 matches training's evaluation exactly)."""
    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            requested
        ]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_for_inference(
    run_dir: Path, which: str, device: torch.device, dtype: str = "auto"
) -> Loaded:
    """Model (eval mode, compute dtype, on device) and tokenizer of a run's checkpoint."""
    path = checkpoint_dir(run_dir, which)
    model = checkpoint.load_model_from_checkpoint(path, device)
    model = cast_for_inference(model, inference_dtype(device, dtype))
    if not (path / "tokenizer.json").is_file():
        raise GptlabError(f"{path} has no tokenizer.json; it was not written by gptlab train")
    try:
        tokenizer = load_tokenizer(path)
    except ValueError as e:
        raise GptlabError(f"{path}: {e}") from None
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise GptlabError(
            f"{path}: the saved tokenizer has {tokenizer.vocab_size} ids but the model "
            f"{model.cfg.vocab_size}; the checkpoint is inconsistent, re-export it from its run"
        )
    return Loaded(model, tokenizer, checkpoint.load_config(path), path)


def prompt_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of a prompt, after the tokenizer's BOS when it has one (documents begin with it in
    training). An empty prompt is just the BOS; a tokenizer without BOS (character-level)
    starts an empty prompt from a newline, nanoGPT's default prompt."""
    try:
        ids = tokenizer.encode_ordinary(text)
        if not ids and tokenizer.bos_id is None:
            ids = tokenizer.encode_ordinary("\n")
    except ValueError as e:  # e.g. a character outside a char vocabulary
        raise ValueError(f"the prompt cannot be encoded: {e}") from None
    if tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    if not ids:
        raise ValueError("the prompt is empty and this tokenizer has no BOS token to start from")
    return ids
