"""The rule for the decoding dtype (infer/plan.py), as a pure function of device and CPU flags."""

from __future__ import annotations

import pytest
import torch

from gptlab.infer.plan import cpu_flags, decode_dtype, decode_quantize

XEON_AMX = frozenset({"avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile"})
EPYC_ZEN4 = frozenset({"avx512f", "avx512bw", "avx512_bf16"})
AVX2_ONLY = frozenset({"avx2", "fma"})
AVX512_NO_BF16 = frozenset({"avx512f", "avx512bw", "avx512vl"})  # e.g. Skylake-SP


@pytest.mark.parametrize("flags", [XEON_AMX, EPYC_ZEN4, AVX2_ONLY, frozenset()])
def test_cpu_default_is_fp32_whatever_the_flags(flags):
    assert decode_dtype("cpu", flags) == torch.float32  # bf16 matvecs measured no faster


@pytest.mark.parametrize(
    "flags, want",
    [(XEON_AMX, torch.bfloat16), (EPYC_ZEN4, torch.bfloat16), (AVX2_ONLY, torch.float32)],
)
def test_int8_computes_in_bf16_where_the_fused_kernel_is_fast(flags, want):
    assert decode_dtype("cpu", flags, quantize="int8") == want


def test_explicit_dtype_and_gpus():
    assert decode_dtype("cpu", XEON_AMX, "bfloat16") == torch.bfloat16
    assert decode_dtype("cpu", XEON_AMX, "float32", quantize="int8") == torch.float32
    assert decode_dtype("cuda", frozenset(), cuda_bf16=True) == torch.bfloat16
    assert decode_dtype("cuda", frozenset(), cuda_bf16=False) == torch.float32
    assert decode_dtype("mps", frozenset()) == torch.float32


def test_cpu_flags_reads_this_machine():
    flags = cpu_flags()
    assert isinstance(flags, frozenset)


@pytest.mark.parametrize(
    "flags, want",
    [
        (XEON_AMX, "int8"),
        (EPYC_ZEN4, "int8"),
        (AVX512_NO_BF16, None),
        (AVX2_ONLY, None),
        (frozenset(), None),
    ],  # fmt: skip
)
def test_auto_quantizes_where_the_fused_int8_kernel_is_fast(flags, want):
    assert decode_quantize("cpu", flags) == want  # "auto" is the default


def test_auto_keeps_the_weights_elsewhere_and_explicit_choices_win():
    assert decode_quantize("cuda", XEON_AMX) is None  # GPUs decode in bf16 instead
    assert decode_quantize("mps", XEON_AMX) is None
    assert decode_quantize("cpu", XEON_AMX, dtype="float32") is None  # a precision asked for
    assert decode_quantize("cpu", XEON_AMX, int8_kernel=False) is None  # torch lacks the kernel
    assert decode_quantize("cpu", XEON_AMX, "none") is None
    assert decode_quantize("cpu", AVX2_ONLY, "int8") == "int8"  # asked for: anywhere
    assert decode_quantize("cuda", frozenset(), "int8", dtype="bfloat16") == "int8"
    with pytest.raises(ValueError, match="quantize must be one of auto, none, int8"):
        decode_quantize("cpu", XEON_AMX, "int4")
