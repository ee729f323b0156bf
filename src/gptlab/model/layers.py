"""Small named pieces a block is built from: norms, MLP kinds, rotary and ALiBi positions.

Each `make_*` function reads one ModelConfig field and returns the matching module, so the
block code never branches on architecture flags. Docs: docs/architecture.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.config import ModelConfig


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """LayerNorm (mean and variance) or RMSNorm (root mean square only) over the last dim."""
    dim = dim or cfg.n_embd
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_weight)
    return nn.LayerNorm(
        dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_weight, bias=cfg.bias and cfg.norm_weight
    )


class GeluMLP(nn.Module):
    """GPT-2's feed-forward: C -> d_ff -> GELU -> C.

    Exact (erf) GELU, as in nanoGPT; GPT-2's tanh approximation differs by < 1e-3 and its
    forward + backward is 3x slower on a CPU (4.0 ms vs 1.3 ms for a (2048, 512) fp32 input).
    """

    def __init__(self, cfg: ModelConfig, d_ff: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, d_ff, bias=cfg.bias)
        self.proj = nn.Linear(d_ff, cfg.n_embd, bias=cfg.bias)

    approximate = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc(x), approximate=self.approximate)  # (B, T, C) -> (B, T, d_ff)
        return self.proj(h)  # (B, T, C)


class GeluTanhMLP(GeluMLP):
    """GELU's tanh approximation, as the original GPT-2 computes it (HF "gelu_new"): for
    imported GPT-2 weights, whose logits then match transformers' exactly."""

    approximate = "tanh"


class Relu2MLP(GeluMLP):
    """Squared ReLU, relu(x)^2 (So et al. 2021, "Primer"); as cheap as ReLU, trains like GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())  # (B, T, C) -> (B, T, C)


class SwiGLUMLP(nn.Module):
    """Gated feed-forward (Shazeer 2020, LLaMA): proj(silu(x W_gate) * (x W_up)).

    The gate and up projections are one (C, 2 d_ff) matmul, split after.
    """

    def __init__(self, cfg: ModelConfig, d_ff: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 2 * d_ff, bias=cfg.bias)
        self.proj = nn.Linear(d_ff, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, C) -> 2 x (B, T, d_ff)
        return self.proj(F.silu(gate) * up)  # (B, T, C)


MLPS: dict[str, type[nn.Module]] = {
    "gelu": GeluMLP,
    "gelu_tanh": GeluTanhMLP,
    "relu2": Relu2MLP,
    "swiglu": SwiGLUMLP,
}


def make_dropout(p: float) -> nn.Module:
    """Dropout, or an identity when p is 0 (cheaper per call, which matters when decoding)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def make_mlp(cfg: ModelConfig, d_ff: int | None = None) -> nn.Module:
    return MLPS[cfg.mlp](cfg, d_ff or cfg.ff_width)


def mlp_params(cfg: ModelConfig, d_ff: int, bias: bool | None = None) -> int:
    """Weights (and biases, if `bias`, default cfg.bias) in one MLP of hidden width d_ff."""
    n_in = 2 * d_ff if cfg.mlp == "swiglu" else d_ff
    weights = cfg.n_embd * n_in + d_ff * cfg.n_embd
    with_bias = cfg.bias if bias is None else bias
    return weights + (n_in + cfg.n_embd if with_bias else 0)


# --- rotary position embedding (Su et al. 2021, "RoFormer")


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Per-pair angular frequencies (D/2,) and the attention scale for cfg.rope_scaling.

    Plain RoPE: inv_freq_i = theta^(-2i/D). Linear scaling divides every frequency by the
    factor s (position interpolation, Chen et al. 2023). YaRN (Peng et al. 2023) divides only
    the low frequencies (wavelengths longer than the original context), keeps the high ones,
    blends in between, and scales the logits by (0.1 ln s + 1)^2.
    """
    D, s = cfg.head_dim, cfg.rope_factor
    inv_freq = cfg.rope_theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    if cfg.rope_scaling == "linear":
        return (inv_freq / s).float(), 1.0
    if cfg.rope_scaling == "yarn":
        original_len = cfg.seq_len / s
        rotations = original_len * inv_freq / (2 * math.pi)  # turns over the original context
        keep = ((rotations - 1.0) / (32.0 - 1.0)).clamp(0.0, 1.0)  # 1 = keep, 0 = interpolate
        inv_freq = inv_freq * (keep + (1 - keep) / s)
        return inv_freq.float(), 0.1 * math.log(s) + 1.0
    return inv_freq.float(), 1.0


def rotary_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles, scaled for cfg.rope_scaling: 2 x (seq_len, D/2)."""
    inv_freq, mscale = rope_frequencies(cfg)
    angles = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos() * mscale, angles.sin() * mscale


class Rotary(nn.Module):
    """Cos/sin tables for positions 0..seq_len-1; `forward(positions)` looks them up."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cos, sin = rotary_tables(cfg)  # (T, D/2) each
        # non-persistent: derived from the config, so not saved in checkpoints
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) or (B, T) -> cos, sin of shape (1, 1, T, D/2) or (B, 1, T, D/2)."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 1:
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, H, T, D) by the position's angles.

    The half-split pairing is the one LLaMA checkpoints in Hugging Face format use. Dot products
    of rotated queries and keys depend only on their relative position.
    """
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, H, T, D/2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, D)


# --- ALiBi (Press et al. 2022, "Train Short, Test Long")


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head slopes m_h: a geometric sequence 2^(-8/n), 2^(-16/n), ... (paper's recipe for
    head counts that are not powers of two: take the nearest power and interleave the rest)."""

    def powers(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_head))
    slopes = powers(p) + powers(2 * p)[0::2][: n_head - p]
    return torch.tensor(slopes, dtype=torch.float32)  # (H,)
