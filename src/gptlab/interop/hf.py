"""The entry points: open an HF model folder as a gptlab model, and write one from ours.

    hf = open_hf(folder)            config.json -> ModelConfig, weight files indexed, every key
                                    and shape checked (nothing read yet)
    build_model(hf)                 a GPT holding the converted weights: built on the meta device,
                                    then filled tensor by tensor (about one copy in memory)
    import_weights(hf)              (name, tensor) pairs, one at a time, for writing a checkpoint
    export_refusal(cfg)             why a ModelConfig has no exact HF equivalent (or None)
    export_hf(cfg, read, tok, out)  config.json, model.safetensors, generation_config.json and
                                    tokenizer files in `out`

Supported: GPT2LMHeadModel (gpt2.py) and LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM where their switches exist in ModelConfig (llama.py). `transformers` parses the
HF config (so its defaults and both rope spellings apply); weights never go through it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import ConfigError, GptlabError
from gptlab.interop import gpt2, llama
from gptlab.interop.convert import Rule, check_keys, export_entries, exporter, import_tensors
from gptlab.interop.tensors import TensorSource, write_safetensors
from gptlab.interop.tokenizers import export_tokenizer, tokenizer_from_hf
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.tokenizer.base import Tokenizer

log = logging.getLogger(__name__)

FAMILIES = {"gpt2": gpt2, **{t: llama for t in llama.MODEL_TYPES}}
SUPPORTED = (gpt2.ARCHITECTURE, *llama.ARCHITECTURES.values())
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass
class HFModel:
    folder: Path
    model_type: str
    cfg: ModelConfig
    rules: list[Rule]
    source: TensorSource
    bos_id: int | None
    eos_id: int | None
    notes: list[str]


def _transformers():
    try:
        import transformers
    except ImportError:
        raise GptlabError(
            "Hugging Face interop needs transformers: pip install 'gptlab[hf]'"
        ) from None
    return transformers


def _read_doc(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise GptlabError(f"{folder} is not a folder; give a Hugging Face model folder")
    try:
        doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or "model_type" not in doc:
        raise GptlabError(
            f"{folder} is not a Hugging Face model folder (no config.json with a model_type)"
        )
    return doc


def _hf_config(folder: Path) -> tuple[Any, str]:
    """(the transformers config object, a label for messages) of a supported model folder."""
    doc = _read_doc(folder)
    archs = doc.get("architectures") or []
    model_type = doc["model_type"]
    if model_type not in FAMILIES or (archs and archs[0] not in SUPPORTED):
        name = archs[0] if archs else model_type
        raise ConfigError(
            f"{folder}: architecture {name} is not supported; gptlab imports {', '.join(SUPPORTED)}"
        )
    try:
        hf = _transformers().AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise GptlabError(f"{folder / 'config.json'} cannot be parsed ({e})") from None
    return hf, f"{folder} ({archs[0] if archs else model_type})"


def read_model_config(folder: Path) -> ModelConfig:
    """The ModelConfig an HF model folder maps to (its config.json only)."""
    hf, where = _hf_config(folder)
    return FAMILIES[hf.model_type].config_from_hf(hf, where)[0]


def _weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise GptlabError(f"{index} is not a readable weight index ({e})") from None
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise GptlabError(f"{folder} lacks the weight shards {', '.join(missing[:3])}")
            return files
        if (folder / name).is_file():
            return [folder / name]
    raise GptlabError(
        f"{folder} has a config.json but no weights (model.safetensors or pytorch_model.bin)"
    )


def open_hf(folder: Path) -> HFModel:
    """Parse and check an HF model folder; no tensor is read yet."""
    folder = Path(folder)
    hf, where = _hf_config(folder)
    family = FAMILIES[hf.model_type]
    cfg, notes = family.config_from_hf(hf, where)
    source = TensorSource(_weight_files(folder))
    names = source.names()
    if family is gpt2:
        rules = gpt2.rules(cfg, gpt2.key_prefix(names))
    else:
        rules = llama.rules(cfg, hf.model_type)
    check_keys(rules, names, source.shape, lambda n: family.ignored(n, cfg), where)
    bos = getattr(hf, "bos_token_id", None)
    eos = getattr(hf, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, list) and eos else eos
    return HFModel(folder, hf.model_type, cfg, rules, source, bos, eos, notes)


def import_weights(hf: HFModel) -> Iterator[tuple[str, torch.Tensor]]:
    """Our (name, fp32 tensor) pairs, converted one at a time."""
    return import_tensors(hf.rules, hf.source.read, hf.cfg)


def build_model(hf: HFModel, device: torch.device | str = "cpu") -> GPT:
    """A GPT with the converted weights: shapes on the meta device, then each parameter filled
    in turn, so memory holds the model plus one tensor."""
    with torch.device("meta"):
        model = GPT(hf.cfg)
    model.to_empty(device=device)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in import_weights(hf):
            params.pop(name).copy_(tensor)
    assert not params, f"no rule filled {sorted(params)[:3]}"
    model.init_buffers()
    return model.eval()


IMPORTED = "imported.json"  # in a run directory made by `gptlab import`: where it came from


def scores_with_bos(cfg: ModelConfig, tokenizer: Tokenizer) -> bool:
    """Whether benchmarks should put BOS before each context for an HF model, as
    lm-evaluation-harness's hf backend does: GPT-2-style models (learned positions) get none,
    Llama-style ones their tokenizer's BOS when it has one."""
    return cfg.pos_emb != "learned" and tokenizer.bos_id is not None


def load_tokenizer(hf: HFModel) -> Tokenizer | None:
    """The folder's own tokenizer, or None if it ships none."""
    return tokenizer_from_hf(hf.folder, hf.bos_id, hf.eos_id)


# --- export ---------------------------------------------------------------------------------


def _common_refusal(cfg: ModelConfig) -> str | None:
    checks = [
        (cfg.moe.enabled, "mixture of experts (model.moe)"),
        (cfg.attn_softcap is not None, "attention softcapping (model.attn_softcap)"),
        (cfg.logit_softcap is not None, "logit softcapping (model.logit_softcap)"),
        (cfg.embed_scale, "scaled embeddings (model.embed_scale)"),
        (cfg.pos_emb in ("alibi", "none"), f"positions {cfg.pos_emb} (model.pos_emb)"),
        (cfg.global_tokens > 0, "global tokens (model.global_tokens)"),
    ]
    return next((what for bad, what in checks if bad), None)


def export_refusal(cfg: ModelConfig) -> str | None:
    """The feature of `cfg` that no transformers class implements exactly, or None."""
    reason = _common_refusal(cfg)
    if reason is None:
        reason = (gpt2 if cfg.pos_emb == "learned" else llama).refusal(cfg)
    return reason


def export_rules(cfg: ModelConfig) -> tuple[list[Rule], dict[str, Any]]:
    """(table, HF config fields without token ids) for an export of `cfg`."""
    if cfg.pos_emb == "learned":
        return gpt2.rules(cfg), gpt2.hf_config(cfg, None, None)
    return llama.rules(cfg, llama.export_type(cfg)), llama.hf_config(cfg, None, None)


def export_hf(
    cfg: ModelConfig,
    names: set[str],
    read_ours: Callable[[str], torch.Tensor],
    tokenizer: Tokenizer | None,
    out: Path,
    chat_template: str | None = None,
) -> list[str]:
    """Write an HF model folder for our weights into the existing, empty folder `out`; returns
    the files written. `names` are the tensors our checkpoint holds (checked against the table);
    `chat_template` (Jinja) is a chat-tuned run's, written into tokenizer_config.json."""
    reason = export_refusal(cfg)
    if reason is not None:
        raise ConfigError(
            f"cannot export to Hugging Face: {reason} has no exact equivalent in transformers"
        )
    transformers = _transformers()
    rules, fields = export_rules(cfg)
    ours = {r.ours for r in rules if r.ours}
    extra = sorted(n for n in names - ours if not n.startswith("mtp."))
    if ours - names or extra:
        raise GptlabError(
            f"the checkpoint's weights do not match its config (missing "
            f"{sorted(ours - names)[:3]}, unexpected {extra[:3]}); it is damaged"
        )
    bos = tokenizer.bos_id if tokenizer is not None else None
    eos = tokenizer.eos_id if tokenizer is not None else None
    fields.update(bos_token_id=bos, eos_token_id=eos)
    model_type = fields.pop("model_type")
    hf_cfg = transformers.AutoConfig.for_model(model_type, **fields)
    (out / "config.json").write_text(hf_cfg.to_json_string(use_diff=False), encoding="utf-8")
    generation = {"bos_token_id": bos, "eos_token_id": eos, "_from_model_config": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", "utf-8")
    write_safetensors(
        out / "model.safetensors",
        export_entries(rules),
        exporter(rules, read_ours),
        metadata={"format": "pt"},
    )
    files = ["config.json", "generation_config.json", "model.safetensors"]
    if tokenizer is not None:
        files += export_tokenizer(tokenizer, out, cfg.seq_len, chat_template)
    return files
