"""Memory planning: estimate what a training step needs before step 0, and how to measure it.

Training memory is four parts:
    weights      4 bytes x parameters (fp32 master weights)
    gradients    4 bytes x parameters
    optimizer    AdamW: 8 bytes x parameters (two moments); Muon: 4 (one momentum buffer)
    activations  what autograd saves for the backward pass, per micro-batch

The first three are exact. Activations are counted per token and layer from the tensors each
block saves: the norm and every matmul input, q, k, v and the attention output, the MLP's
hidden activations, plus the fp32 log-softmax at the end, and the attention probabilities of
the layers whose attention kernel keeps them (the CPU bf16 kernel, model/cpu_bf16_attention.py:
the plan asks the model which layers run it). Under bf16/fp16 autocast
most of these are half-size copies but norms stay fp32; `AUTOCAST_BYTES` = 2.8 bytes per
element on average was measured with `saved_activation_bytes` on several shapes. With
activation checkpointing a block keeps only its input, and one block's activations are
recomputed at a time. The estimate is checked in tests against the bytes autograd really saves
(within 30 %).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable

import torch
from torch import nn

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.runtime import Runtime
from gptlab.train.config import RunConfig

FP32_BYTES = 4.0
AUTOCAST_BYTES = 2.8  # measured average bytes per saved element under bf16 autocast
SCORE_KEEPING_KERNELS = ("cpu_bf16",)  # attention kernels that save their (T, T) probabilities


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self, available: float | None) -> str:
        gb = lambda b: f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB"
        parts = (
            f"weights {gb(self.weights)} + grads {gb(self.gradients)} + optimizer "
            f"{gb(self.optimizer)} + activations {gb(self.activations)} = {gb(self.total)}"
        )
        if available:
            parts += f" of {gb(available)} ({100 * self.total / available:.0f} %)"
        return parts


def activation_elements_per_token(cfg: ModelConfig) -> tuple[float, float]:
    """(elements saved per token in all blocks, elements per token at the output head)."""
    C, kv = cfg.n_embd, cfg.kv_heads * cfg.head_dim
    ff = cfg.expert_width if cfg.moe.n_experts else cfg.ff_width
    k = cfg.moe.top_k + cfg.moe.n_shared_experts if cfg.moe.n_experts else 1
    attn = C + C + (C + 2 * kv) + C + C  # norm in, qkv in, q/k/v, attention out, proj in
    if cfg.qk_norm:
        attn += C + kv
    if cfg.pos_emb == "rope":
        attn += C + kv  # rotated copies of q and k
    mlp_hidden = {"gelu": 2 * ff, "gelu_tanh": 2 * ff, "relu2": 3 * ff, "swiglu": 4 * ff}[cfg.mlp]
    mlp = C + C + k * mlp_hidden  # norm in, fc in, hidden activations (per active expert)
    if cfg.moe.n_experts:  # router logits and probabilities, dispatched copies in and out
        mlp += 2 * cfg.moe.n_experts + k * 3 * C
    per_block = attn + mlp
    head = C + C + cfg.vocab_size  # final norm in, head in, fp32 log-softmax
    return cfg.n_layer * per_block, head


def estimate_memory(
    cfg: ModelConfig,
    n_params: int,
    micro_batch: int,
    autocast: bool,
    optimizer_bytes_per_param: float = 8.0,
    activation_checkpointing: bool = False,
    shards: int = 1,
    score_layers: int = 0,
) -> MemoryEstimate:
    """Bytes one training step needs on one device (see the module doc); FSDP over `shards`
    ranks keeps 1/shards of the weights, gradients and optimizer state on each.
    `score_layers` layers also keep their bf16 attention probabilities, n_head x seq_len per
    token (see `score_keeping_layers`)."""
    tokens = micro_batch * cfg.seq_len
    blocks, head = activation_elements_per_token(cfg)
    scores = score_layers * cfg.n_head * cfg.seq_len * 2.0  # bytes per token
    if activation_checkpointing:  # block inputs kept, one block's activations at a time
        blocks = cfg.n_layer * cfg.n_embd + blocks / cfg.n_layer
        scores /= cfg.n_layer
    per_elem = AUTOCAST_BYTES if autocast else FP32_BYTES
    activations = tokens * (blocks * per_elem + head * FP32_BYTES + scores)
    return MemoryEstimate(
        weights=4.0 * n_params / shards,
        gradients=4.0 * n_params / shards,
        optimizer=optimizer_bytes_per_param * n_params / shards,
        activations=activations,
    )


def available_memory(device: torch.device) -> float | None:
    """Bytes the device has: GPU memory, or the machine's RAM for a CPU."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def saved_activation_bytes(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward (parameters
    excluded): the measured counterpart of `estimate_memory(...).activations`."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        loss, _ = model(x, y)
    del loss
    return sum(seen.values())


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them.

    Wraps `forward` of every module in `model.blocks`, so parameter names (and checkpoints)
    are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def score_keeping_layers(model: GPT, runtime: Runtime, T: int) -> int:
    """How many layers of `model` keep their attention probabilities in a training forward of T
    tokens on this runtime: the model says which kernel each layer runs."""
    kernels = model.attention_kernels(runtime.device, runtime.compute_dtype, T)
    return sum(kernel in SCORE_KEEPING_KERNELS for kernel in kernels)


def memory_plan(cfg: RunConfig, runtime: Runtime, n_params: int, model: GPT | None = None) -> str:
    """The per-device memory estimate for the largest micro-batch of any stage, against what
    the device has. `model` is the one being trained (by default one built from cfg.model on the
    meta device, which costs no memory): it says which attention kernels it runs."""
    if model is None:
        with torch.device("meta"):
            model = GPT(cfg.model)
    tc = cfg.train
    shapes = [
        tc.shape_at(s, cfg.model.seq_len, runtime.world_size) for s in [0, *tc.stage_starts()]
    ]
    B, T, _ = max(shapes, key=lambda shape: shape[0] * shape[1])
    model_cfg: ModelConfig = dataclasses.replace(cfg.model, seq_len=T)
    sharded = runtime.world_size if runtime.distributed and tc.strategy == "fsdp" else 1
    memory = estimate_memory(
        model_cfg,
        n_params,
        B,
        autocast=runtime.compute_dtype != runtime.param_dtype,
        optimizer_bytes_per_param=8.0 if cfg.optim.name == "adamw" else 4.0,
        activation_checkpointing=tc.activation_checkpointing,
        shards=sharded,
        score_layers=score_keeping_layers(model, runtime, T),
    )
    return memory.describe(available_memory(runtime.device))
