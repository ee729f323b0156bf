"""Which dtype decoding computes in on this machine: a pure rule over the CPU's flags.

Measured on the `shakespeare_char` shape at batch 1 (docs/inference.md, "The default fast
path"), on a 2-core Xeon with AMX and AVX512-BF16: the 25 matrix-vector products of a decode
step take 0.83 ms in fp32 and 1.2-1.3 ms in bf16 (F.linear, or 0.9 ms with oneDNN's packed
weights), so bf16 weights are not faster there even though the CPU "computes bf16 fast": the
weights of a small model sit in cache and the bf16 kernels are tuned for matrices, not vectors.
An AMD EPYC with AVX512-BF16 and no AMX has the same kernels and no AMX. So on a CPU the default
stays fp32 whatever the flags say, which also matches training's evaluation exactly.

Weight-only int8 (`--quantize int8`, infer/quantize.py) is the exception: torch's fused
int8-weight kernel is fast only for bf16 activations and only in its AVX-512 build (0.42 ms for
the same 25 products), so with AVX-512 int8 computes in bf16, and elsewhere in fp32 with the
weights dequantised inside each product (correct, not faster). On a GPU, bf16 where supported.

`decode_quantize` is the rule for `--quantize auto`, the default of sample, chat and serve:
int8 where that fused kernel is fast (a CPU with AVX-512 and AVX512-BF16, the dtype left to
auto), since there it decodes about 1.4x faster than the best fp32 step (2.7x transformers'
fp32 `generate` at batch 1, against 2.0x) for a val loss equal within noise
(docs/inference.md); everywhere else the weights stay as they are. Library calls
(`load_for_inference`) default to no quantisation, and `gptlab eval` never quantises.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AVX512 = frozenset({"avx512f", "avx512bw"})  # what torch's AVX-512 kernels need
# where --quantize auto picks int8: AVX-512 with native bf16 arithmetic for the activations,
# the kind measured (a Xeon with AMX; an AMD EPYC Zen 4 has these flags too, unmeasured)
AUTO_INT8 = AVX512 | {"avx512_bf16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of this machine's first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


QUANTIZE = ("auto", "none", "int8")


def decode_quantize(
    device_type: str,
    flags: frozenset[str],
    requested: str = "auto",
    dtype: str = "auto",
    int8_kernel: bool = True,
) -> str | None:
    """The weight format of inference: None (the checkpoint's weights) or 'int8'. 'auto' is
    int8 on a CPU with AVX-512 and AVX512-BF16 and torch's fused int8 kernel (`int8_kernel`)
    when the dtype is also left to auto (an explicit --dtype asks for that precision), else
    None."""
    if requested not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, got {requested!r}")
    if requested == "auto":
        fast = device_type == "cpu" and dtype == "auto" and flags >= AUTO_INT8 and int8_kernel
        return "int8" if fast else None
    return None if requested == "none" else requested


def decode_dtype(
    device_type: str,
    flags: frozenset[str],
    requested: str = "auto",
    quantize: str | None = None,
    cuda_bf16: bool = False,
) -> torch.dtype:
    """The compute dtype of inference: `requested` unless 'auto'; else bf16 on a GPU with bf16
    (`cuda_bf16`), and on a CPU fp32, or bf16 for int8 weights where the CPU has AVX-512."""
    if requested != "auto":
        return DTYPES[requested]
    if device_type == "cuda":
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if device_type == "cpu" and quantize == "int8" and flags >= AVX512:
        return torch.bfloat16
    return torch.float32
