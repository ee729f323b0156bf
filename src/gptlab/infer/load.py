"""Load a trained run for inference: the model in its compute dtype, its tokenizer, its config.

`gptlab sample`, `gptlab chat` and `gptlab serve` all start here, so a run directory, a
checkpoint directory inside it and an exported checkpoint are accepted the same way. So is
`hf:DIR`, a Hugging Face model folder, converted on the fly (gptlab.interop): this module is the
one place that resolves it, for inference (`load_for_inference`) and for reading weights one
tensor at a time (`open_weights`: export and `train --init-from`).

A LoRA run's checkpoint holds only its adapters (model/lora.py), plus `lora_base.json`: the base
it was trained on (`train.init_from`: a run, checkpoint or hf:DIR) and the sha256 of the base's
weight files (`weights_hash`). Both entry points accept it: they check the hash (a base changed
since training is refused, never silently combined with adapters trained for other weights),
open the base and return merged weights, W + (alpha/r) B A, so sample, chat, serve, eval,
`export --format hf` and `train --init-from` see a plain model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptlab import checkpoint
from gptlab.config import from_dict, to_dict
from gptlab.errors import GptlabError
from gptlab.infer.engine import cast_for_inference
from gptlab.infer.plan import cpu_flags, decode_dtype, decode_quantize
from gptlab.infer.quantize import has_int8_kernel, quantize_int8
from gptlab.interop import hf as interop
from gptlab.interop.convert import import_tensor
from gptlab.interop.tensors import TensorSource
from gptlab.model.config import LoRAConfig, ModelConfig
from gptlab.model.gpt import GPT
from gptlab.model.lora import adapted_layers, adapter_shapes, layer_delta
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.load import load_tokenizer

HF_PREFIX = "hf:"
LORA_BASE = "lora_base.json"  # in a LoRA run's checkpoints: {"init_from", "weights_sha256"}
HASH_CHUNK_BYTES = 8 * 2**20
MAX_LORA_DEPTH = 8  # a LoRA run on a LoRA run on ...: more than this is a cycle


@dataclasses.dataclass
class Loaded:
    """A model ready for the engine, with what came with it."""

    model: GPT
    tokenizer: Tokenizer
    config: dict[str, Any]  # the run's full stored config
    path: Path  # the checkpoint directory read
    quantized: str | None = None  # the weight format inference uses: None or "int8"

    def describe(self) -> str:
        """One line for a CLI: the weights and dtype decoding uses."""
        p = next(iter(self.model.parameters()), None)
        dtype = str(p.dtype).removeprefix("torch.") if p is not None else "?"
        if self.quantized:
            return f"{self.quantized} weights, {dtype} activations"
        return f"{dtype} weights"


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
    if is_lora_checkpoint(path):
        return _merged_source(open_lora(path))
    config = checkpoint.load_config(path)
    cfg = _model_config(path, config)
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


def _model_config(path: Path, config: dict[str, Any]) -> ModelConfig:
    try:
        return from_dict(ModelConfig, config["model"], prefix="model.")
    except (KeyError, ValueError) as e:
        raise GptlabError(f"checkpoint {path} has an invalid model config ({e})") from None


# --- LoRA runs --------------------------------------------------------------------------------


@dataclasses.dataclass
class LoRARun:
    """A LoRA checkpoint: its adapters, what they adapt, and the base they were trained on."""

    path: Path  # the checkpoint directory
    config: dict[str, Any]  # the run's full stored config (lora.rank > 0)
    cfg: ModelConfig
    lora: LoRAConfig
    base_spec: str  # train.init_from: a run, checkpoint or hf:DIR
    base_sha256: str
    adapters: dict[str, torch.Tensor]  # names as in the adapted model's state dict


def is_lora_checkpoint(path: Path) -> bool:
    """Whether checkpoint directory `path` holds LoRA adapters rather than a full model."""
    return (Path(path) / LORA_BASE).is_file()


def read_lora_base(path: Path) -> dict[str, str]:
    """The lora_base.json of checkpoint `path`: {"init_from": spec, "weights_sha256": hex}."""
    file = Path(path) / LORA_BASE
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
        record = {"init_from": str(doc["init_from"]), "weights_sha256": str(doc["weights_sha256"])}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise GptlabError(
            f"{file} is unreadable ({type(e).__name__}: {e}); the LoRA checkpoint is damaged"
        ) from None
    return record


def open_lora(spec: str | Path, which: str = "best") -> LoRARun:
    """The adapters of a LoRA run or checkpoint, checked against its config (base not read)."""
    path = checkpoint_dir(Path(spec), which)
    if not is_lora_checkpoint(path):
        raise GptlabError(f"{path} holds no LoRA adapters (no {LORA_BASE}); it is a full model")
    config = checkpoint.load_config(path)
    cfg = _model_config(path, config)
    try:
        lora = from_dict(LoRAConfig, config.get("lora", {}), prefix="lora.")
        expected = adapter_shapes(cfg, lora) if lora.enabled else {}
    except ValueError as e:
        raise GptlabError(f"checkpoint {path} has an invalid lora config ({e})") from None
    if not expected:
        raise GptlabError(f"{path} has a {LORA_BASE} but lora.rank 0 in its config; damaged")
    record = read_lora_base(path)
    adapters = checkpoint.read_weights(path)
    got = {n: tuple(t.shape) for n, t in adapters.items()}
    if got != expected:
        wrong = sorted(n for n in set(got) | set(expected) if got.get(n) != expected.get(n))
        raise GptlabError(
            f"{path / checkpoint.WEIGHTS} does not hold the adapters its config describes "
            f"(first mismatches: {wrong[:3]}); the LoRA checkpoint is damaged"
        )
    return LoRARun(path, config, cfg, lora, record["init_from"], record["weights_sha256"], adapters)


def _weight_paths(spec: str | Path, depth: int = 0) -> list[Path]:
    """The files `open_weights(spec)` reads weights from: an HF folder's weight files, a
    checkpoint's model.safetensors, or for a LoRA checkpoint its base's files and its own."""
    folder = hf_folder(spec)
    if folder is not None:
        if not folder.is_dir():
            raise GptlabError(f"{folder} is not a folder; give a Hugging Face model folder")
        return interop._weight_files(folder)
    path = checkpoint_dir(Path(spec))
    own = path / checkpoint.WEIGHTS
    if not is_lora_checkpoint(path):
        return [own]
    if depth >= MAX_LORA_DEPTH:
        raise GptlabError(f"{path}: its chain of LoRA bases is longer than {MAX_LORA_DEPTH}")
    return [*_weight_paths(read_lora_base(path)["init_from"], depth + 1), own]


def weights_hash(spec: str) -> str:
    """sha256 (hex) of the weight file(s) `open_weights(spec)` reads, streamed in chunks: what
    a LoRA run records of its base (lora_base.json), to refuse a base that changed since."""
    h = hashlib.sha256()
    for file in _weight_paths(spec):
        try:
            with open(file, "rb") as f:
                while chunk := f.read(HASH_CHUNK_BYTES):
                    h.update(chunk)
        except OSError as e:
            raise GptlabError(f"cannot read {file} to hash it ({e.strerror})") from None
    return h.hexdigest()


def _open_base(run: LoRARun) -> WeightSource:
    """The base of a LoRA run, refused if its weights changed since the adapters were trained."""
    spec = run.base_spec
    try:
        now = weights_hash(spec)
    except GptlabError as e:
        raise GptlabError(f"LoRA checkpoint {run.path} needs its base model {spec}: {e}") from None
    if now != run.base_sha256:
        raise GptlabError(
            f"the base model {spec} changed since {run.path} was trained on it (sha256 "
            f"{run.base_sha256[:12]}... then, {now[:12]}... now); restore the original base "
            f"weights, or train the adapters again on the new base (--init-from {spec})"
        )
    return open_weights(spec)


def _merged_source(run: LoRARun) -> WeightSource:
    """The weights of a LoRA run with its adapters folded in: W + (alpha/r) B A per layer."""
    base = _open_base(run)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in GPT(run.cfg).named_parameters()}
    missing = [n for n in shapes if n not in base.names]
    if missing:
        raise GptlabError(f"the base {run.base_spec} of {run.path} lacks weights {missing[:3]}")
    layers = adapted_layers(run.cfg, run.lora)
    scale = run.lora.alpha / run.lora.rank
    vocab = run.cfg.vocab_size

    def read(name: str) -> torch.Tensor:
        t = base.read(name).float()
        if tuple(t.shape) != shapes[name]:
            if name not in ("wte.weight", "lm_head.weight") or t.shape[1:] != shapes[name][1:]:
                raise GptlabError(
                    f"{run.path}: the base's {name} has shape {tuple(t.shape)}, the LoRA run's "
                    f"model {shapes[name]}; a LoRA run must keep its base's shapes"
                )
            fitted = t.new_zeros(shapes[name])  # another vocab padding: padded rows are 0
            fitted[:vocab] = t[:vocab]
            t = fitted
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in layers:
            parts = layers[module]
            names = [n for p in parts for n in (p.a_name, p.b_name)]
            tensors = {n: run.adapters[f"{module}.{n}"] for n in names}
            t = t + layer_delta(parts, tensors, scale, t.shape[0])  # (out, in)
        return t

    tokenizer = base.tokenizer
    if (run.path / "tokenizer.json").is_file():
        try:
            tokenizer = load_tokenizer(run.path)
        except ValueError as e:
            raise GptlabError(f"{run.path}: {e}") from None
    notes = [*base.notes, f"LoRA adapters of {run.path} merged into {run.base_spec}"]
    return WeightSource(run.cfg, set(shapes), read, tokenizer, run.config, run.path, notes)


def build_model(source: WeightSource, device: torch.device | str = "cpu") -> GPT:
    """A GPT holding `source`'s weights, filled tensor by tensor (eval mode)."""
    with torch.device("meta"):
        model = GPT(source.cfg)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(source.read(name))
    model.init_buffers()
    return model.eval()


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


def inference_dtype(
    device: torch.device, requested: str = "auto", quantize: str | None = None
) -> torch.dtype:
    """'auto' is bf16 on a GPU that supports it and fp32 on a CPU, or bf16 for int8 weights on a
    CPU with AVX-512 (the rule and its measurements: infer/plan.py)."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return decode_dtype(device.type, cpu_flags(), requested, quantize, cuda_bf16)


def load_for_inference(
    run_dir: Path,
    which: str,
    device: torch.device,
    dtype: str = "auto",
    quantize: str | None = None,
) -> Loaded:
    """Model (eval mode, compute dtype, on device) and tokenizer of a run's checkpoint, or of
    an hf:DIR model converted on the fly; `quantize="int8"` stores its linears' weights in int8
    (infer/quantize.py), "auto" does so where infer/plan.py's rule says it is faster, and
    None or "none" (the default) keeps the weights as they are."""
    device = torch.device(device)
    quantize = decode_quantize(
        device.type, cpu_flags(), quantize or "none", dtype, int8_kernel=has_int8_kernel()
    )
    loaded = _load(run_dir, which, device, inference_dtype(device, dtype, quantize))
    if quantize == "int8":
        quantize_int8(loaded.model)
    loaded.quantized = quantize
    return loaded


def _load(run_dir: Path, which: str, device: torch.device, dtype: torch.dtype) -> Loaded:
    folder = hf_folder(run_dir)
    if folder is not None:
        hf = interop.open_hf(folder)
        tokenizer = _hf_tokenizer(hf)
        _check_vocab(folder, tokenizer, hf.cfg)
        model = cast_for_inference(interop.build_model(hf, device), dtype)
        return Loaded(model, tokenizer, {"model": to_dict(hf.cfg)}, folder)
    path = checkpoint_dir(run_dir, which)
    if is_lora_checkpoint(path):  # adapters merged into their base
        source = open_weights(path)
        if source.tokenizer is None:
            raise GptlabError(f"neither {path} nor its base carries a tokenizer.json")
        _check_vocab(path, source.tokenizer, source.cfg)
        model = cast_for_inference(build_model(source, device), dtype)
        return Loaded(model, source.tokenizer, source.config, path)
    model = checkpoint.load_model_from_checkpoint(path, device)
    model = cast_for_inference(model, dtype)
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
