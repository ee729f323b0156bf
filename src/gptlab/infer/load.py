"""Load a trained run for inference: the model in its compute dtype, its tokenizer, its config.

`gptlab sample`, `gptlab chat` and `gptlab serve` all start here, so a run directory, a
checkpoint directory inside it and an exported checkpoint are accepted the same way. So is
`hf:DIR`, a Hugging Face model folder, converted on the fly (gptlab.interop): this module is the
one place that resolves it, for inference (`load_for_inference`) and for reading weights one
tensor at a time (`open_weights`: export and `train --init-from`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptlab import checkpoint
from gptlab.config import from_dict, to_dict
from gptlab.errors import GptlabError
from gptlab.infer.engine import cast_for_inference
from gptlab.interop import hf as interop
from gptlab.interop.convert import import_tensor
from gptlab.interop.tensors import TensorSource
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.load import load_tokenizer

HF_PREFIX = "hf:"


@dataclasses.dataclass
class Loaded:
    """A model ready for the engine, with what came with it."""

    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]  # the run's full stored config
    path: Path  # the checkpoint directory read


def hf_folder(spec: str | Path) -> Path | None:
    """The folder of an `hf:DIR` spec, or None for a gptlab run or checkpoint directory."""
    text = str(spec)
    return Path(text[len(HF_PREFIX) :]).expanduser() if text.startswith(HF_PREFIX) else None


def _hf_tokenizer(hf: interop.HFModel) -> Tokenizer:
    tokenizer = interop.load_tokenizer(hf)
    if tokenizer is None:
        raise GptlabError(
            f"{hf.folder} ships no tokenizer (tokenizer.json or vocab.json + merges.txt); "
            f"import it with gptlab import {hf.folder} --out RUN_DIR --tokenizer NAME"
        )
    return tokenizer


def _check_vocab(path: Path, tokenizer: Tokenizer, cfg: ModelConfig) -> None:
    if tokenizer.vocab_size != cfg.vocab_size:
        raise GptlabError(
            f"{path}: the saved tokenizer has {tokenizer.vocab_size} ids but the model "
            f"{cfg.vocab_size}; the checkpoint is inconsistent, re-export it from its run"
        )


@dataclasses.dataclass
class WeightSource:
    """A model's weights, read one tensor at a time, with its config and tokenizer."""

    cfg: ModelConfig
    names: set[str]  # our parameter names (a tied head under wte.weight only)
    read: Callable[[str], torch.Tensor]  # name -> fp32 CPU tensor in our layout
    tokenizer: Tokenizer | None
    config: dict[str, Any]  # the stored run config ({"model": ...} for hf:DIR)
    path: Path  # the checkpoint directory or HF folder read
    notes: list[str] = dataclasses.field(default_factory=list)  # what a conversion approximated


def open_weights(spec: str | Path, which: str = "best") -> WeightSource:
    """The weights of a run directory, checkpoint directory or hf:DIR, ready to stream."""
    folder = hf_folder(spec)
    if folder is not None:
        hf = interop.open_hf(folder)
        by_name = {r.ours: r for r in hf.rules if r.ours}
        return WeightSource(
            cfg=hf.cfg,
            names=set(by_name),
            read=lambda name: import_tensor(by_name[name], hf.source.read, hf.cfg),
            tokenizer=interop.load_tokenizer(hf),
            config={"model": to_dict(hf.cfg)},
            path=folder,
            notes=hf.notes,
        )
    path = checkpoint_dir(Path(spec), which)
    config = checkpoint.load_config(path)
    try:
        cfg = from_dict(ModelConfig, config["model"], prefix="model.")
    except (KeyError, ValueError) as e:
        raise GptlabError(f"checkpoint {path} has an invalid model config ({e})") from None
    if not (path / checkpoint.WEIGHTS).is_file():
        raise GptlabError(f"checkpoint {path} has no {checkpoint.WEIGHTS}")
    source = TensorSource([path / checkpoint.WEIGHTS])
    names, stored_as = source.names(), {}
    with torch.device("meta"):
        aliases = checkpoint.tied_aliases(GPT(cfg))
    for alias, first in aliases.items():  # a tied matrix may be stored under either name
        if first not in names and alias in names:
            stored_as[first] = alias
    names = (names - set(stored_as.values())) | set(stored_as)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        try:
            tokenizer = load_tokenizer(path)
        except ValueError as e:
            raise GptlabError(f"{path}: {e}") from None
    return WeightSource(
        cfg, names, lambda name: source.read(stored_as.get(name, name)), tokenizer, config, path
    )


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
    """Model (eval mode, compute dtype, on device) and tokenizer of a run's checkpoint, or of
    an hf:DIR model converted on the fly."""
    folder = hf_folder(run_dir)
    if folder is not None:
        hf = interop.open_hf(folder)
        tokenizer = _hf_tokenizer(hf)
        _check_vocab(folder, tokenizer, hf.cfg)
        model = cast_for_inference(interop.build_model(hf, device), inference_dtype(device, dtype))
        return Loaded(model, tokenizer, {"model": to_dict(hf.cfg)}, folder)
    path = checkpoint_dir(run_dir, which)
    model = checkpoint.load_model_from_checkpoint(path, device)
    model = cast_for_inference(model, inference_dtype(device, dtype))
    if not (path / "tokenizer.json").is_file():
        raise GptlabError(f"{path} has no tokenizer.json; it was not written by gptlab train")
    try:
        tokenizer = load_tokenizer(path)
    except ValueError as e:
        raise GptlabError(f"{path}: {e}") from None
    _check_vocab(path, tokenizer, model.cfg)
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
