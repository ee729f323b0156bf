"""Weight-only int8 quantisation for decoding (`--quantize int8` on sample, chat and serve).

At batch 1 a decode step reads every weight once and does two flops per weight, so what a
matrix-vector product costs is how many bytes it reads and how well the kernel streams them.
gpt-fast's recipe halves the bytes of bf16 (a quarter of fp32): each linear's weight W (out, in)
is stored as int8 with one scale per output channel,

    s_o = max_i |W_oi| / 127,    Q_oi = round(W_oi / s_o) in [-127, 127],

and the product dequantises inside the matmul: y = (x Q^T) * s, never materialising W again.
Activations, norms, embeddings, attention and the KV cache stay in the compute dtype.

On a CPU with AVX-512, torch's `_weight_int8pack_mm` does exactly this product, fast for bf16
activations (0.42 ms for the 25 products of a `shakespeare_char` decode step on a 2-core Xeon,
against 0.83 ms for them in fp32); for other activation dtypes it has only a slow scalar loop,
so `int8_kernel(dtype, device)` says when to use it and the layer otherwise dequantises to the
activation dtype (`F.linear(x, Q.to(x.dtype)) * s`: correct everywhere, not faster).
`quantize_int8(model)` swaps every nn.Linear for an `Int8Linear` in place, the output head
included (a tied head gets its own int8 copy; the embedding table stays as it was).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

QMAX = 127  # symmetric: -127..127, so that -W quantises to -Q


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) -> int8 Q (out, in) and fp32 per-output-channel scales s (out,), W ~ Q * s."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / QMAX  # (out,): an all-zero row gets 1e-12
    q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)  # (out, in)
    return q, scale


@functools.cache
def has_int8_kernel() -> bool:
    """Whether this torch has the fused int8-weight matmul (`_weight_int8pack_mm`)."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def int8_kernel(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch's fused int8-weight matmul is the fast path for activations of `dtype` on
    `device`: bf16 on a CPU (its AVX-512 loop; the caller checks the CPU has AVX-512)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and has_int8_kernel()


class Int8Linear(nn.Module):
    """y = x (Q s)^T + b with int8 Q (out, in) and scales s (out,), dequantised in the matmul."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        weight = linear.weight
        dtype = dtype or weight.dtype
        q, scale = quantize_weight(weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", q.to(weight.device))  # (out, in) int8
        self.register_buffer("scale", scale.to(weight.device, dtype))  # (out,)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.fused = int8_kernel(dtype, weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.dtype == self.scale.dtype:
            shape = x.shape
            y = torch.ops.aten._weight_int8pack_mm(
                x.reshape(-1, shape[-1]), self.weight, self.scale
            )  # (N, in) -> (N, out)
            y = y.view(*shape[:-1], self.out_features)  # (..., out)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)  # (..., out)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, W' = Q * s (out, in), in fp32."""
        return self.weight.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every nn.Linear of `model` by an Int8Linear (in place; activations of `dtype`,
    default each layer's weight dtype). Returns the model."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear(child, dtype))
    return model
