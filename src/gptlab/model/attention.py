"""Causal self-attention with every variant the config offers, and three backends.

    q, k, v = x W_q, x W_k, x W_v          (n_head query heads, n_kv_head key/value heads: GQA)
    q, k    = rmsnorm(q), rmsnorm(k)       (qk_norm)
    q, k    = rope(q), rope(k)             (pos_emb rope)
    s_ij    = q_i . k_j / sqrt(D)
    s_ij    = cap * tanh(s_ij / cap)       (attn_softcap)
    s_ij    = s_ij - m_h * (i - j)         (pos_emb alibi)
    s_ij    = -inf where j may not be seen (causal; sliding window; other document)
    y_i     = sum_j softmax(s_i)_j v_j

Which keys a query may see is one function, `visible`, used for the dense masks and for
FlexAttention alike. Backends:
  sdpa  torch's scaled_dot_product_attention: fused kernels; is_causal=True when the mask is
        plain causal, otherwise a dense (T, T) mask (slower; we log a warning once). SDPA cannot
        softcap, so attn_softcap falls back to `math` (also warned).
  math  the explicit reference above, in fp32: slow, obviously correct, used by the tests.
  flex  torch FlexAttention: the mask becomes a block-sparse BlockMask and softcap/ALiBi a
        score_mod, so windows and documents skip whole blocks instead of masking a dense matrix.
        Compiled on CUDA; on a CPU torch runs an unfused eager path (correct, slow) that has no
        backward, so on a CPU flex is for inference and tests only.

On a CPU in bf16, SDPA is slow, so `kernel` sends the sdpa backend's plain causal layers to
`cpu_bf16` (model/cpu_bf16_attention.py: bf16 matmuls that keep the scores) and its other
layers to `sdpa_fp32` (SDPA on fp32 copies). `kernel` is also what the training memory plan
asks, so the forward pass and the plan cannot disagree about which layers keep their scores.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model import cpu_bf16_attention
from gptlab.model.config import ModelConfig
from gptlab.model.layers import alibi_slopes, apply_rope

if TYPE_CHECKING:
    from gptlab.model.kv_cache import CacheStep

log = logging.getLogger(__name__)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("warning: %s", message)


@dataclasses.dataclass
class AttnContext:
    """What every block's attention needs besides x; built once per forward by the model."""

    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin: (1 or B, 1, T, D/2)
    doc_ids: torch.Tensor | None = None  # (B, T) document index of each token, or None
    cache: CacheStep | None = None  # inference: where k, v go and what each query may see


def visible(
    q_idx: torch.Tensor,
    kv_idx: torch.Tensor,
    window: int | None,
    global_tokens: int,
    doc_q: torch.Tensor | None = None,
    doc_kv: torch.Tensor | None = None,
) -> torch.Tensor:
    """True where query position q_idx may attend to key position kv_idx (broadcasts)."""
    ok = kv_idx <= q_idx  # causal
    if window is not None:
        ok = ok & ((q_idx - kv_idx < window) | (kv_idx < global_tokens))
    if doc_q is not None:
        ok = ok & (doc_q == doc_kv)  # never across a document boundary
    return ok


def dense_mask(
    T: int, window: int | None, global_tokens: int, doc_ids: torch.Tensor | None, device
) -> torch.Tensor:
    """The visibility rule as a dense bool mask: (1, 1, T, T), or (B, 1, T, T) with documents."""
    i = torch.arange(T, device=device)[:, None]  # (T, 1) queries
    j = torch.arange(T, device=device)[None, :]  # (1, T) keys
    if doc_ids is None:
        return visible(i, j, window, global_tokens)[None, None]
    doc_q, doc_kv = doc_ids[:, None, :, None], doc_ids[:, None, None, :]  # (B,1,T,1), (B,1,1,T)
    return visible(i, j, window, global_tokens, doc_q, doc_kv)


def alibi_bias(slopes: torch.Tensor, T: int) -> torch.Tensor:
    """ALiBi's additive bias -m_h * (i - j): (1, H, T, T), float32."""
    pos = torch.arange(T, device=slopes.device)
    return alibi_distance_bias(slopes, (pos[:, None] - pos[None, :])[None])


def alibi_distance_bias(slopes: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """-m_h * max(i - j, 0) for query-key distances (B, T, S) and slopes (H,): (B, H, T, S)."""
    return -(slopes[None, :, None, None] * distance[:, None].clamp(min=0).float())


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Reference attention: q (B, H, T, D), k and v (B, Hkv, T, D) -> (B, H, T, D)."""
    groups = q.size(1) // k.size(1)
    k = k.repeat_interleave(groups, dim=1)  # (B, Hkv, T, D) -> (B, H, T, D)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, H, T, T)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return (probs @ v.float()).to(q.dtype)  # (B, H, T, D)


def _flex():
    """flex_attention and create_block_mask (torch >= 2.5; ModelConfig checks the version)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return flex_attention, create_block_mask


@functools.cache
def _compiled_flex():
    return torch.compile(_flex()[0], dynamic=False)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.layer = layer
        self.window = cfg.layer_window(layer)
        self._block_masks: dict = {}  # flex BlockMasks without documents, by (T, device)
        self.qkv = nn.Linear(
            cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias
        )
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(
                cfg.head_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_weight
            )
            self.k_norm = nn.RMSNorm(
                cfg.head_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_weight
            )
        if cfg.pos_emb == "alibi":
            self.register_buffer("alibi", alibi_slopes(cfg.n_head), persistent=False)  # (H,)
        if cfg.attn_backend == "sdpa" and cfg.attn_softcap is not None:
            _warn_once(
                "SDPA cannot softcap attention scores, so model.attn_softcap runs the "
                "slow math path; use --model.attn_backend flex for a fused kernel"
            )

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=2)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, T, H*D) -> (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if ctx.rope is not None:
            q, k = apply_rope(q, *ctx.rope), apply_rope(k, *ctx.rope)
        if ctx.cache is not None:
            k, v = ctx.cache.write(self.layer, k, v)  # (B, Hkv, S, D): cached keys + new ones
            y = self._cached(q, k, v, ctx.cache)  # (B, H, T, D)
        else:
            kernel = self.kernel(q.device, q.dtype, T, ctx.doc_ids is not None, self._dropout_p())
            y = getattr(self, f"_{kernel}")(q, k, v, ctx.doc_ids)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, H, T, D) -> (B, T, C)
        return self.proj(y)

    def kernel(
        self, device: torch.device, dtype: torch.dtype, T: int, with_docs: bool, dropout_p: float
    ) -> str:
        """The kernel a forward of T tokens runs without a KV cache: the configured backend,
        `math` for softcaps under sdpa, and on a CPU in bf16 `cpu_bf16` or `sdpa_fp32`."""
        if self.cfg.attn_backend != "sdpa":
            return self.cfg.attn_backend
        if self.cfg.attn_softcap is not None:
            return "math"  # SDPA cannot softcap (warned at construction)
        plain_causal = self._plain_causal(with_docs)
        if cpu_bf16_attention.applies(device, dtype, plain_causal, dropout_p, T):
            return "cpu_bf16"
        if device.type == "cpu" and dtype == torch.bfloat16:
            return "sdpa_fp32"  # SDPA's bf16 CPU kernels are slower than its fp32 ones
        return "sdpa"

    def _dropout_p(self) -> float:
        return self.cfg.dropout if self.training else 0.0

    def _plain_causal(self, with_docs: bool) -> bool:
        return self.window is None and not with_docs and self.cfg.pos_emb != "alibi"

    def _math(self, q, k, v, doc_ids) -> torch.Tensor:
        T = q.size(2)
        mask = dense_mask(T, self.window, self.cfg.global_tokens, doc_ids, q.device)
        bias = alibi_bias(self.alibi, T) if self.cfg.pos_emb == "alibi" else None
        return math_attention(q, k, v, mask, bias, self.cfg.attn_softcap, self._dropout_p())

    def _sdpa(self, q, k, v, doc_ids) -> torch.Tensor:
        T = q.size(2)
        mask, is_causal = None, self._plain_causal(doc_ids is not None)
        if not is_causal:
            _warn_once(
                "sliding windows, document masks and ALiBi give SDPA a dense T x T mask "
                "(slower, more memory); --model.attn_backend flex avoids it"
            )
            mask = dense_mask(T, self.window, self.cfg.global_tokens, doc_ids, q.device)
            if self.cfg.pos_emb == "alibi":
                bias = alibi_bias(self.alibi, T)  # (1, H, T, T)
                mask = bias.masked_fill(~mask, float("-inf"))
        gqa = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self._dropout_p(), is_causal=is_causal, **gqa
        )

    def _sdpa_fp32(self, q, k, v, doc_ids) -> torch.Tensor:
        # autocast would cast the fp32 copies back to bf16, so switch it off for this call
        with torch.autocast(device_type=q.device.type, enabled=False):
            return self._sdpa(q.float(), k.float(), v.float(), doc_ids).to(q.dtype)

    def _cpu_bf16(self, q, k, v, doc_ids) -> torch.Tensor:
        return cpu_bf16_attention.causal_attention(q, k, v)  # plain causal: doc_ids is None

    def _cached(self, q, k, v, step: CacheStep) -> torch.Tensor:
        """Attention of T new queries over S cached slots (inference; any backend setting).

        Softcaps take the math path and ALiBi adds its bias to the mask; otherwise SDPA, with no
        mask for one query per row or a fresh prefill, and a dense (T, S) mask in other cases.
        """
        cfg = self.cfg
        gqa = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        no_mask, causal = step.simple(self.window)
        if cfg.attn_softcap is None and cfg.pos_emb != "alibi" and (no_mask or causal):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)
        mask = step.mask(self.window, cfg.global_tokens)  # (B or 1, 1, T, S)
        bias = step.alibi(self.alibi) if cfg.pos_emb == "alibi" else None  # (B or 1, H, T, S)
        if cfg.attn_softcap is not None:
            return math_attention(q, k, v, mask, bias, cfg.attn_softcap)
        if bias is not None:
            mask = bias.masked_fill(~mask, float("-inf")).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)

    def _flex(self, q, k, v, doc_ids) -> torch.Tensor:
        flex_attention, create_block_mask = _flex()
        B, T = q.size(0), q.size(2)
        window, n_global, cap = self.window, self.cfg.global_tokens, self.cfg.attn_softcap
        slopes = self.alibi if self.cfg.pos_emb == "alibi" else None

        def mask_mod(b, h, q_idx, kv_idx):
            if doc_ids is None:
                return visible(q_idx, kv_idx, window, n_global)
            return visible(q_idx, kv_idx, window, n_global, doc_ids[b, q_idx], doc_ids[b, kv_idx])

        def score_mod(score, b, h, q_idx, kv_idx):
            if cap is not None:
                score = cap * torch.tanh(score / cap)
            if slopes is not None:
                score = score - slopes[h] * (q_idx - kv_idx)
            return score

        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            raise ValueError(
                "model.attn_backend flex has no backward pass on a CPU in this torch; train "
                "with --model.attn_backend sdpa (or math) and use flex on a GPU"
            )
        if doc_ids is None:  # the mask depends only on T: build it once per length
            key = (T, q.device)
            if key not in self._block_masks:
                self._block_masks[key] = create_block_mask(mask_mod, None, None, T, T, q.device)
            block_mask = self._block_masks[key]
        else:  # documents differ per batch
            block_mask = create_block_mask(mask_mod, B, None, T, T, device=q.device)
        mod = score_mod if (cap is not None or slopes is not None) else None
        gqa = self.n_kv_head != self.n_head
        if q.device.type == "cuda" and not torch.compiler.is_compiling():
            return _compiled_flex()(q, k, v, score_mod=mod, block_mask=block_mask, enable_gqa=gqa)
        with warnings.catch_warnings():  # torch warns that eager flex is unfused; we know
            warnings.simplefilter("ignore")
            dtype = q.dtype
            if q.device.type == "cpu" and dtype == torch.bfloat16:
                q, k, v = q.float(), k.float(), v.float()
            y = flex_attention(q, k, v, score_mod=mod, block_mask=block_mask, enable_gqa=gqa)
        return y.to(dtype)
