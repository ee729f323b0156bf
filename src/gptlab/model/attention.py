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

On a CPU, SDPA's fused kernel is slow in bf16 (its backward especially), so under CPU bf16
autocast plain causal attention runs `_CpuCausalAttention`: bf16 batched matmuls and ATen's
fused softmax, about twice as fast as SDPA in fp32 (forward + backward of one shakespeare_char
layer at B=16: about 26 ms against 42 ms on a 2-core AMX Xeon). Masked variants (windows,
documents, ALiBi) and attention dropout keep SDPA, with its core in fp32.
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


class _CpuCausalAttention(torch.autograd.Function):
    """Causal attention for bf16 on a CPU, as batched matmuls with the scores in memory.

        forward:  s = q k^T / sqrt(D) + causal bias,  p = softmax(s),  y = p v
        backward: dv = p^T dy,  dp = dy v^T,  ds = p * (dp - rowsum(dp * p)),
                  dq = ds k / sqrt(D),  dk = ds^T q / sqrt(D)

    Every product is a bf16 batched matmul (AMX / AVX512-BF16 kernels) with 1/sqrt(D) folded
    in as the matmul's alpha, and the softmax and its backward are ATen's fused kernels. A
    layer's attention, forward and backward, runs about twice as fast as SDPA's fused CPU kernel
    in fp32 (SDPA's bf16 backward is slower still). The (B*H, T, T) probabilities are kept for
    the backward, T*T*2 bytes per head and sequence, so this path is for the short contexts of
    CPU training (CPU_BF16_ATTENTION_MAX_T).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, H, T, D = q.shape
        scale = D**-0.5
        bias = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        q3, k3, v3 = (t.reshape(B * H, T, D) for t in (q, k, v))  # (BH, T, D)
        s = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)  # (BH, T, T)
        p = s.softmax(dim=-1)
        ctx.save_for_backward(q3, k3, v3, p)
        ctx.scale = scale
        return torch.bmm(p, v3).view(B, H, T, D)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q3, k3, v3, p = ctx.saved_tensors
        shape, scale = dy.shape, ctx.scale
        dy3 = dy.reshape(q3.shape)  # (BH, T, D)
        dv = torch.bmm(p.transpose(1, 2), dy3)
        dp = torch.bmm(dy3, v3.transpose(1, 2))  # (BH, T, T)
        ds = torch._softmax_backward_data(dp, p, -1, p.dtype)  # softmax's own fused backward
        unused = q3.new_zeros(()).expand(q3.shape)  # baddbmm's input, ignored with beta=0
        dq = torch.baddbmm(unused, ds, k3, beta=0, alpha=scale)
        dk = torch.baddbmm(unused, ds.transpose(1, 2), q3, beta=0, alpha=scale)
        return dq.view(shape), dk.view(shape), dv.view(shape)


CPU_BF16_ATTENTION_MAX_T = 1024  # longer contexts keep SDPA (the T x T scores grow as T^2)


def _cpu_bf16_kernel_applies(plain_causal: bool, dropout_p: float, T: int) -> bool:
    """Whether a CPU bf16 SDPA call runs `_CpuCausalAttention` (the one rule for both the
    forward and the memory plan)."""
    return plain_causal and dropout_p == 0 and T <= CPU_BF16_ATTENTION_MAX_T


def cpu_bf16_attention_layers(cfg: ModelConfig, T: int, dropout_p: float) -> int:
    """How many layers run `_CpuCausalAttention` in a CPU bf16 forward of T tokens: the sdpa
    backend's plain causal layers (no window, documents, ALiBi or softcap), without attention
    dropout, for T up to CPU_BF16_ATTENTION_MAX_T. The memory plan counts their saved scores."""
    if cfg.attn_backend != "sdpa" or cfg.attn_softcap is not None:
        return 0
    return sum(
        _cpu_bf16_kernel_applies(
            cfg.layer_window(i) is None and not cfg.doc_mask and cfg.pos_emb != "alibi",
            dropout_p,
            T,
        )
        for i in range(cfg.n_layer)
    )


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
            backend = getattr(self, f"_{self.cfg.attn_backend}")
            y = backend(q, k, v, ctx.doc_ids)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, H, T, D) -> (B, T, C)
        return self.proj(y)

    def _dropout_p(self) -> float:
        return self.cfg.dropout if self.training else 0.0

    def _plain_causal(self, doc_ids: torch.Tensor | None) -> bool:
        return self.window is None and doc_ids is None and self.cfg.pos_emb != "alibi"

    def _math(self, q, k, v, doc_ids) -> torch.Tensor:
        T = q.size(2)
        mask = dense_mask(T, self.window, self.cfg.global_tokens, doc_ids, q.device)
        bias = alibi_bias(self.alibi, T) if self.cfg.pos_emb == "alibi" else None
        return math_attention(q, k, v, mask, bias, self.cfg.attn_softcap, self._dropout_p())

    def _sdpa(self, q, k, v, doc_ids) -> torch.Tensor:
        if self.cfg.attn_softcap is not None:
            _warn_once(
                "SDPA cannot softcap attention scores, so model.attn_softcap runs the "
                "slow math path; use --model.attn_backend flex for a fused kernel"
            )
            return self._math(q, k, v, doc_ids)
        T = q.size(2)
        mask, is_causal = None, self._plain_causal(doc_ids)
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
        cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
        if cpu_bf16 and _cpu_bf16_kernel_applies(is_causal, self._dropout_p(), T):
            if gqa:  # each key/value head serves n_head / n_kv_head query heads
                k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
                v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            return _CpuCausalAttention.apply(q, k, v)  # (B, H, T, D)
        if cpu_bf16:
            # autocast would cast fp32 inputs back to bf16, so switch it off for this call
            with torch.autocast(device_type="cpu", enabled=False):
                y = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), attn_mask=mask,
                    dropout_p=self._dropout_p(), is_causal=is_causal, **gqa,
                )  # fmt: skip
            return y.to(q.dtype)  # (B, H, T, D)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self._dropout_p(), is_causal=is_causal, **gqa
        )

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
