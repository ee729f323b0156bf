"""LoRA (Hu et al. 2021): train a low-rank update of frozen linear layers, W' = W + (alpha/r) B A.

A (r, in) starts random and B (out, r) at zero, so a fresh adapter changes nothing; only A and B
train, which is what saves optimizer memory (AdamW keeps two moments per trained number).

`LoRALinear` replaces an nn.Linear in place and keeps its parameters under the same names
(`attn.qkv.weight`, `attn.qkv.bias`), so the base weights load and save as before; the adapters
are extra parameters whose last name part starts with `lora_`. Our fused layers hold several
projections: attn.qkv is q, k, v stacked by rows (H*D, Hkv*D, Hkv*D), a SwiGLU mlp.fc is gate
and up (d_ff rows each). Each targeted projection gets its own A and B over its own rows
(`lora_A_q`, `lora_B_q`, ...), exactly standard LoRA on separate q/k/v (gate/up) layers, so
they map one to one onto Llama's q_proj, k_proj, v_proj, gate_proj, up_proj (interop/peft.py).
A layer adapted as a whole has `lora_A` and `lora_B`.

Targets (LoRAConfig.targets): q, k, v (rows of attn.qkv), o (attn.proj), mlp_in (mlp.fc) and
mlp_out (mlp.proj), in the trunk's blocks only (multi-token-prediction heads stay frozen). A
mixture-of-experts layer's experts are stacked tensors, not nn.Linear, and are not adapted.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.config import LORA_TARGETS, LoRAConfig, ModelConfig

PREFIX = "lora_"


@dataclasses.dataclass(frozen=True)
class Part:
    """The rows [start, stop) of a layer's output that one adapter updates; `name` is the
    projection ("q", "gate", ...) or "" for the whole layer."""

    name: str
    start: int
    stop: int

    @property
    def a_name(self) -> str:
        return f"{PREFIX}A_{self.name}" if self.name else f"{PREFIX}A"

    @property
    def b_name(self) -> str:
        return f"{PREFIX}B_{self.name}" if self.name else f"{PREFIX}B"


def is_adapter(name: str) -> bool:
    """Whether parameter (or state dict entry) `name` belongs to a LoRA adapter."""
    return name.rsplit(".", 1)[-1].startswith(PREFIX)


def _block_targets(cfg: ModelConfig, layer: int) -> dict[str, tuple[str, tuple[Part, ...]]]:
    """target -> (module name inside the block, its part) for every target block `layer` has."""
    H, Hkv, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
    q, kv = H * D, Hkv * D
    out = {
        "q": ("attn.qkv", (Part("q", 0, q),)),
        "k": ("attn.qkv", (Part("k", q, q + kv),)),
        "v": ("attn.qkv", (Part("v", q + kv, q + 2 * kv),)),
        "o": ("attn.proj", (Part("", 0, cfg.n_embd),)),
    }
    if not cfg.is_moe_layer(layer):
        d_ff = cfg.ff_width
        if cfg.mlp == "swiglu":
            out["mlp_in"] = ("mlp.fc", (Part("gate", 0, d_ff), Part("up", d_ff, 2 * d_ff)))
        else:
            out["mlp_in"] = ("mlp.fc", (Part("", 0, d_ff),))
        out["mlp_out"] = ("mlp.proj", (Part("", 0, cfg.n_embd),))
    return out


def available_targets(cfg: ModelConfig) -> tuple[str, ...]:
    """The LORA_TARGETS names that match a layer of a model of `cfg`."""
    found = {t for i in range(cfg.n_layer) for t in _block_targets(cfg, i)}
    return tuple(t for t in LORA_TARGETS if t in found)


def adapted_layers(cfg: ModelConfig, lora: LoRAConfig) -> dict[str, tuple[Part, ...]]:
    """module name -> its adapters' parts (in row order), for the targets of `lora`.
    ValueError in one line when a target matches no layer, listing those that do."""
    wanted = lora.target_names()
    missing = [t for t in wanted if t not in available_targets(cfg)]
    if missing:
        moe = ""
        if cfg.moe.enabled and set(missing) <= {"mlp_in", "mlp_out"}:
            moe = (
                " (its MLPs are mixture-of-experts layers, whose stacked expert weights LoRA "
                "does not adapt)"
            )
        raise ValueError(
            f"{', '.join(missing)} match no layer of this model{moe}; available targets: "
            f"{', '.join(available_targets(cfg)) or 'none'}"
        )
    layers: dict[str, list[Part]] = {}
    for i in range(cfg.n_layer):
        targets = _block_targets(cfg, i)
        for t in wanted:
            if t in targets:
                module, parts = targets[t]
                layers.setdefault(f"blocks.{i}.{module}", []).extend(parts)
    return {name: tuple(sorted(parts, key=lambda p: p.start)) for name, parts in layers.items()}


def adapter_shapes(cfg: ModelConfig, lora: LoRAConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every adapter tensor a model of `cfg` with `lora` holds."""
    r, C = lora.rank, cfg.n_embd
    shapes = {}
    for module, parts in adapted_layers(cfg, lora).items():
        fan_in = cfg.ff_width if module.endswith("mlp.proj") else C
        for p in parts:
            shapes[f"{module}.{p.a_name}"] = (r, fan_in)
            shapes[f"{module}.{p.b_name}"] = (p.stop - p.start, r)
    return shapes


def layer_delta(
    parts: tuple[Part, ...], tensors: dict[str, torch.Tensor], scale: float, out_features: int
) -> torch.Tensor:
    """(alpha/r) B A of one layer as an (out, in) fp32 matrix, zero on rows no part adapts;
    `tensors` maps the parts' a_name / b_name to A (r, in) and B (rows, r)."""
    fan_in = tensors[parts[0].a_name].shape[1]
    delta = torch.zeros(out_features, fan_in, device=tensors[parts[0].a_name].device)
    for p in parts:
        a, b = tensors[p.a_name].float(), tensors[p.b_name].float()
        delta[p.start : p.stop] = scale * (b @ a)  # (rows, r) @ (r, in) -> (rows, in)
    return delta


class LoRALinear(nn.Module):
    """An nn.Linear's weight and bias (same names, same tensors) plus one adapter per part:
    y = x W^T + b + (alpha/r) [B_p A_p dropout(x)] placed on each part's rows."""

    def __init__(
        self,
        base: nn.Linear,
        parts: tuple[Part, ...],
        lora: LoRAConfig,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.parts, self.rank, self.scale = parts, lora.rank, lora.alpha / lora.rank
        self.lora_dropout = nn.Dropout(lora.dropout) if lora.dropout > 0 else nn.Identity()
        w = base.weight
        bound = 1 / math.sqrt(self.in_features)  # kaiming_uniform(a=sqrt(5)), as nn.Linear
        draw_on = generator.device if generator is not None else torch.device("cpu")
        for p in parts:
            a = torch.empty(lora.rank, self.in_features, dtype=w.dtype, device=draw_on)
            a.uniform_(-bound, bound, generator=generator)
            self.register_parameter(p.a_name, nn.Parameter(a.to(w.device)))  # (r, in)
            b = torch.zeros(p.stop - p.start, lora.rank, dtype=w.dtype, device=w.device)
            self.register_parameter(p.b_name, nn.Parameter(b))  # (rows, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., in) -> (..., out)
        h = self.lora_dropout(x)
        pieces, row = [], 0
        for p in self.parts:
            if p.start > row:  # rows no adapter touches
                pieces.append(y.new_zeros(*y.shape[:-1], p.start - row))
            a, b = getattr(self, p.a_name), getattr(self, p.b_name)
            pieces.append(F.linear(F.linear(h, a), b))  # (..., in) -> (..., r) -> (..., rows)
            row = p.stop
        if row < self.out_features:
            pieces.append(y.new_zeros(*y.shape[:-1], self.out_features - row))
        delta = torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]  # (..., out)
        return y + self.scale * delta

    def adapters(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for p in self.parts for n in (p.a_name, p.b_name)}

    def extra_repr(self) -> str:
        parts = ", ".join(p.name or "all" for p in self.parts)
        return f"{self.in_features} -> {self.out_features}, rank {self.rank} on {parts}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def apply_lora(
    model: nn.Module, cfg: LoRAConfig, generator: torch.Generator | None = None
) -> list[str]:
    """Wrap the targeted linear layers of a GPT with fresh adapters, in place, and freeze every
    other parameter. A is drawn from `generator` (torch's global RNG if None). Returns the
    adapted modules' names; ValueError in one line if a target matches no layer."""
    if not cfg.enabled:
        raise ValueError("lora.rank is 0 (LoRA off); give --lora.rank R > 0 to add adapters")
    if any(is_adapter(n) for n, _ in model.named_parameters()):
        raise ValueError("the model already has LoRA adapters; apply_lora runs once")
    layers = adapted_layers(model.cfg, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, parts in layers.items():
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear) or base.out_features < parts[-1].stop:
            raise ValueError(f"{name} is not the linear layer LoRA expects ({base!r})")
        _set_module(model, name, LoRALinear(base, parts, cfg, generator))
    return list(layers)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, by their names in model.state_dict(), on the CPU."""
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if is_adapter(n)}


@torch.no_grad()
def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into `model`'s adapters, strictly (every adapter, nothing else,
    each of its shape), or ValueError in one line."""
    ours = {n: t for n, t in model.state_dict(keep_vars=True).items() if is_adapter(n)}
    if not ours:
        raise ValueError("the model has no LoRA adapters to load into; apply_lora first")
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(
            f"the adapter state does not match the model's adapters (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); were they trained with other --lora.targets?"
        )
    for name, t in state.items():
        if tuple(t.shape) != tuple(ours[name].shape):
            raise ValueError(
                f"adapter {name} has shape {tuple(t.shape)}, the model's {tuple(ours[name].shape)}"
                "; were they trained with another --lora.rank?"
            )
    for name, t in state.items():
        ours[name].copy_(t)


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight, W += (alpha/r) B A, and turn the layers back
    into plain nn.Linear (same weight and bias tensors), so the state dict is a plain GPT's."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        w = module.weight
        delta = layer_delta(module.parts, module.adapters(), module.scale, module.out_features)
        w.add_(delta.to(w.dtype))  # (out, in)
        with torch.device("meta"):  # no throw-away weights: ours are put in next
            linear = nn.Linear(module.in_features, module.out_features, bias=False)
        linear.weight = w
        linear.register_parameter("bias", module.bias)
        _set_module(model, name, linear)
