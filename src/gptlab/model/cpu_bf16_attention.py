"""Causal attention for bf16 training on a CPU: batched matmuls with the scores in memory.

On a CPU, torch's fused SDPA kernel is slow in bf16, its backward especially (12.5 ms against
3.0 ms in fp32 for B=32, H=4, T=64, D=32 on a 2-core AVX512-BF16 Xeon). So under CPU bf16
autocast the sdpa backend's plain causal layers run `causal_attention` instead: every product is
a bf16 batched matmul (AMX / AVX512-BF16 kernels) and the softmax and its backward are ATen's
fused kernels. One shakespeare_char layer (B=16), forward and backward, takes about 26 ms
against 42 ms for SDPA in fp32.

The trade-off: unlike a flash kernel it keeps the (B*H, T, T) probabilities for the backward,
n_head x T bf16 numbers per token and layer, so it is only used up to MAX_T tokens. The
training memory plan counts them: it asks the model which layers run this kernel
(`GPT.attention_kernels`). Which layers those are is decided by `CausalSelfAttention.kernel`
with `applies` below, the one rule for the forward pass and the plan alike.
"""

from __future__ import annotations

import torch

MAX_T = 1024  # longer contexts keep SDPA in fp32 (the T x T scores grow as T^2)


def applies(
    device: torch.device, dtype: torch.dtype, plain_causal: bool, dropout_p: float, T: int
) -> bool:
    """Whether attention of T tokens in `dtype` on `device` runs `causal_attention`: bf16 on a
    CPU, plain causal (no window, documents or ALiBi), no attention dropout, T <= MAX_T."""
    on_cpu_bf16 = device.type == "cpu" and dtype == torch.bfloat16
    return on_cpu_bf16 and plain_causal and dropout_p == 0 and T <= MAX_T


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention in bf16: q (B, H, T, D), k and v (B, Hkv, T, D) -> (B, H, T, D)."""
    groups = q.size(1) // k.size(1)
    if groups > 1:  # each key/value head serves H / Hkv query heads (GQA)
        k = k.repeat_interleave(groups, dim=1)  # (B, Hkv, T, D) -> (B, H, T, D)
        v = v.repeat_interleave(groups, dim=1)
    return CpuCausalAttention.apply(q, k, v)  # (B, H, T, D)


class CpuCausalAttention(torch.autograd.Function):
    """Causal attention of q, k, v (B, H, T, D) with a hand-written backward.

        forward:  s = q k^T / sqrt(D) + causal bias,  p = softmax(s),  y = p v
        backward: dv = p^T dy,  dp = dy v^T,  ds = p * (dp - rowsum(dp * p)),
                  dq = ds k / sqrt(D),  dk = ds^T q / sqrt(D)

    1/sqrt(D) is folded into each matmul as its alpha. p is saved for the backward.
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
