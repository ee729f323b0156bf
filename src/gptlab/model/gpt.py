"""GPT: a decoder-only transformer, readable top to bottom.

Design (GPT-2): token + learned position embeddings, pre-LayerNorm residual blocks
(x + attn(ln(x)), x + mlp(ln(x))), a final LayerNorm, and an output head tied to the token
embedding. Init follows GPT-2: N(0, 0.02) everywhere, with residual output projections scaled by
1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.attention import CausalSelfAttention
from gptlab.model.config import ModelConfig
from gptlab.model.layers import MLP


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one (V, C) matrix both ways
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 init for every parameter; residual projections get std 0.02 / sqrt(2 L)."""
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=resid_std, generator=generator)
            else:  # embeddings (wte is also lm_head), qkv and mlp.fc weights
                nn.init.normal_(p, mean=0.0, std=0.02, generator=generator)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) in fp32, or the mean cross-entropy if `targets` (B, T) is given."""
        B, T = idx.shape
        if self.cfg.seq_len < T:
            raise ValueError(f"sequence of {T} tokens exceeds model.seq_len {self.cfg.seq_len}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x).float()  # (B, T, V), fp32 for a stable softmax
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count (tied weights once). Without embeddings, drops the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n if include_embeddings else n - self.wpe.weight.numel()


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward = 3x forward), attention included.

    Forward: 2 FLOPs per multiply-add for every weight matrix (the lm_head included, embeddings
    excluded since they are lookups), plus attention's QK^T and AV: 2 * 2 * T * C per layer.
    """
    T = seq_len or cfg.seq_len
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    matmul_params = L * (3 * C * C + C * C + 8 * C * C) + V * C
    attn = L * 2 * 2 * T * C
    return 3 * (2 * matmul_params + attn)
