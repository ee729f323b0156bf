"""LoRA adapters in Hugging Face PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER_DIR)

computes what our LoRA model computes, where BASE is the base exported by `gptlab export BASE_RUN
--format hf`. Module names are those of that export (gpt2.py, llama.py); PEFT stores
`base_model.model.<module>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r) per module, with
scale lora_alpha / r (rank_pattern / alpha_pattern override r and alpha per module).

Llama-family exports have one HF module per projection, so each of our adapters maps onto one:
q, k, v -> q_proj, k_proj, v_proj; o -> o_proj; mlp_in -> gate_proj and up_proj (SwiGLU's two
halves, each its own adapter); mlp_out -> down_proj. GPT-2's attention is one fused Conv1D,
c_attn, and PEFT has one adapter per module, so our per-projection adapters on q, k, v become one
block-structured adapter of rank (parts x r): A stacks the parts' A matrices, B puts each part's
B on its own rows and its own r columns (zeros elsewhere), so B A is exactly the sum of the
parts' updates. Its rank_pattern entry is parts x r and its alpha_pattern entry parts x alpha,
which keeps the scale at alpha / r. Conv1D stores its weight (in, out): fan_in_fan_out is true
for GPT-2 (only merging reads it; lora_A and lora_B have the nn.Linear layout either way).

We write our own LoRA layer (model/lora.py) rather than use `peft` for training: PEFT wraps whole
modules, so on our fused attn.qkv and SwiGLU mlp.fc it would adapt q, k and v (gate and up) with
one shared low-rank matrix instead of one per projection, and it would rename the base
parameters (`base_layer.weight`), which our checkpoints, optimizer groups and FSDP/DDP code
address by name. `peft` is used only in the tests, as the reference this file must satisfy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gptlab.errors import ConfigError
from gptlab.interop.hf import export_refusal
from gptlab.model.config import LoRAConfig, ModelConfig
from gptlab.model.lora import Part, adapted_layers

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."

# our module (inside a block) -> GPT-2's (one per layer: parts are combined) ...
GPT2_MODULES = {
    "attn.qkv": "attn.c_attn",
    "attn.proj": "attn.c_proj",
    "mlp.fc": "mlp.c_fc",
    "mlp.proj": "mlp.c_proj",
}
# ... and (our module, part) -> the Llama family's (one per part)
LLAMA_MODULES = {
    ("attn.qkv", "q"): "self_attn.q_proj",
    ("attn.qkv", "k"): "self_attn.k_proj",
    ("attn.qkv", "v"): "self_attn.v_proj",
    ("attn.proj", ""): "self_attn.o_proj",
    ("mlp.fc", "gate"): "mlp.gate_proj",
    ("mlp.fc", "up"): "mlp.up_proj",
    ("mlp.proj", ""): "mlp.down_proj",
}


def _block_structured(
    parts: tuple[Part, ...], tensors: dict[str, torch.Tensor], out_features: int, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter of rank len(parts) * r equal to the sum of the parts' adapters."""
    a = torch.cat([tensors[p.a_name] for p in parts], dim=0)  # (P*r, in)
    b = a.new_zeros(out_features, len(parts) * r)  # (out, P*r)
    for j, p in enumerate(parts):
        b[p.start : p.stop, j * r : (j + 1) * r] = tensors[p.b_name]
    return a, b


def peft_adapter(
    cfg: ModelConfig, lora: LoRAConfig, adapters: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(adapter_model tensors, adapter_config fields) of our adapters, for the HF architecture
    `gptlab export --format hf` writes for `cfg`. ConfigError if `cfg` has no HF export."""
    reason = export_refusal(cfg)
    if reason is not None:
        raise ConfigError(
            f"cannot export to PEFT: the base model has no Hugging Face export ({reason} has "
            "no exact equivalent in transformers)"
        )
    is_gpt2 = cfg.pos_emb == "learned"
    r = lora.rank
    qkv_rows = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}

    def put(module: str, a: torch.Tensor, b: torch.Tensor) -> None:
        tensors[f"{KEY_PREFIX}{module}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{KEY_PREFIX}{module}.lora_B.weight"] = b.float().contiguous()

    for name, parts in adapted_layers(cfg, lora).items():
        _, layer, ours = name.split(".", 2)  # blocks.<i>.<module>
        own = {n: adapters[f"{name}.{n}"] for p in parts for n in (p.a_name, p.b_name)}
        if is_gpt2:
            theirs = GPT2_MODULES[ours]
            out_features = qkv_rows if ours == "attn.qkv" else parts[-1].stop
            a, b = _block_structured(parts, own, out_features, r)
            if len(parts) > 1:
                rank_pattern[theirs] = len(parts) * r
                alpha_pattern[theirs] = len(parts) * lora.alpha
            put(f"transformer.h.{layer}.{theirs}", a, b)
            targets.add(theirs)
        else:
            for p in parts:
                theirs = LLAMA_MODULES[(ours, p.name)]
                put(f"model.layers.{layer}.{theirs}", own[p.a_name], own[p.b_name])
                targets.add(theirs.rsplit(".", 1)[-1])  # q_proj, ...: unique in the family
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(targets),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": is_gpt2,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
        "revision": None,
    }
    return tensors, config


def export_peft(
    cfg: ModelConfig,
    lora: LoRAConfig,
    adapters: dict[str, torch.Tensor],
    out: Path,
    base_name: str | None = None,
) -> list[str]:
    """Write adapter_config.json and adapter_model.safetensors into the existing folder `out`;
    `base_name` is recorded as base_model_name_or_path (a hint; loading passes the base)."""
    tensors, config = peft_adapter(cfg, lora, adapters)
    config["base_model_name_or_path"] = base_name
    save_file(tensors, str(Path(out) / WEIGHTS), metadata={"format": "pt"})
    (Path(out) / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return [CONFIG, WEIGHTS]
