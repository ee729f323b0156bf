"""Benchmark: where a CPU bf16 training step at the `shakespeare_char` shape spends its time, and
the fraction of the matmul peak it could reach if everything but its largest kernels were free.

cpu_flops.py measures the whole step through `gptlab train`; this script takes the same step
apart, in one process, with the same settings (bf16 autocast, 2 threads, freed memory kept in
malloc's heap, dropout 0, batch 64, context 256):

    step        one eager training step: forward, backward, gradient clipping, fused AdamW
    linear      every nn.Linear's three matmuls, timed alone on fresh bf16 tensors of the shapes
                the step gives them: y = x W^T, dx = dy W, dW = dy^T x (autograd's orientation).
                `linear_best_orientation_ms` also times dW as (x^T dy)^T and keeps the faster
    attention   the causal attention kernel the step uses (CpuCausalAttention), forward + backward
    gelu        exact GELU forward + backward on the (B, T, 4C) hidden activations
    rest        step - (linear + attention + gelu): layer norms, residual adds, dtype casts,
                head reshapes, embeddings, the loss, clipping and the optimizer; these ops do
                little arithmetic per byte, so they run at the speed of memory:
    copy_gb_s   the machine's memory bandwidth as a large tensor copy sees it (bytes read +
                written per second)

`floor_fraction_of_bf16_peak_1024` is the achieved fraction the step would have if `rest` cost
nothing: an upper bound for a step built from these kernels.

    GPTLAB_DATA_DIR=../shared/data python benchmarks/cpu_step_breakdown.py
    python benchmarks/cpu_step_breakdown.py --quick   # smoke: 2 layers, batch 8

Output: one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cpu_flops import matmul_peak
from gptlab.model.accounting import flops_per_token
from gptlab.model.cpu_bf16_attention import CpuCausalAttention
from gptlab.model.gpt import GPT
from gptlab.optim.build import build_optimizer
from gptlab.presets import shakespeare_char
from gptlab.runtime import keep_freed_host_memory

BF16 = torch.bfloat16


def median_ms(fn: Callable[..., object], repeats: int, *args: torch.Tensor) -> float:
    """Median wall time of fn(*args) in ms, after one untimed call."""
    fn(*args)  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def linear_ms(model: nn.Module, tokens: int, repeats: int) -> tuple[float, float]:
    """Summed median time of every Linear's forward, input-gradient and weight-gradient matmul
    (autograd's orientation, then the faster of the two orientations)."""
    as_run = best = 0.0
    for m in model.modules():
        if not isinstance(m, nn.Linear):
            continue
        w = m.weight.detach().to(BF16)  # (out, in)
        x = torch.randn(tokens, m.in_features, dtype=BF16)
        dy = torch.randn(tokens, m.out_features, dtype=BF16)
        fwd = median_ms(torch.mm, repeats, x, w.t())
        dx = median_ms(torch.mm, repeats, dy, w)
        dw = median_ms(torch.mm, repeats, dy.t(), x)  # (out, in): what autograd computes
        dw_t = median_ms(torch.mm, repeats, x.t(), dy)  # its transpose, (in, out)
        as_run += fwd + dx + dw
        best += fwd + dx + min(dw, dw_t)
    return as_run, best


def copy_gb_s(repeats: int) -> float:
    x = torch.randn(64 * 2**20)  # 256 MiB of fp32, far larger than any cache
    y = torch.empty_like(x)
    return 2 * x.nbytes / median_ms(y.copy_, repeats, x) / 1e6


def grad_ms(fn: Callable[..., torch.Tensor], shapes: list[tuple[int, ...]], repeats: int) -> float:
    """Median time of fn's forward + backward on fresh bf16 inputs of the given shapes."""
    inputs = [torch.randn(s, dtype=BF16, requires_grad=True) for s in shapes]
    out = fn(*inputs)
    dy = torch.randn_like(out)

    def step():
        torch.autograd.grad(fn(*inputs), inputs, dy)  # returns the gradients: no accumulation

    return median_ms(step, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=7, help="timed training steps (median)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each kernel (median)")
    ap.add_argument("--quick", action="store_true", help="2 layers, batch 8: a smoke test")
    a = ap.parse_args()
    keep_freed_host_memory()  # as `gptlab train` does on a CPU
    cfg = dataclasses.replace(shakespeare_char().model, vocab_size=65, dropout=0.0)
    B = 64
    if a.quick:
        cfg, B = dataclasses.replace(cfg, n_layer=2), 8
    T, C, H = cfg.seq_len, cfg.n_embd, cfg.n_head
    torch.manual_seed(0)
    model = GPT(cfg)
    optimizer = build_optimizer(model.named_parameters(), shakespeare_char().optim)
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))

    def train_step() -> None:
        with torch.autocast("cpu", dtype=BF16):
            loss, _ = model(idx, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step = median_ms(train_step, a.steps)  # its untimed first step allocates AdamW's state
    linear, linear_best = linear_ms(model, B * T, a.repeats)
    attention = cfg.n_layer * grad_ms(CpuCausalAttention.apply, [(B, H, T, C // H)] * 3, a.repeats)
    gelu = cfg.n_layer * grad_ms(F.gelu, [(B, T, cfg.ff_width)], a.repeats)
    peak = matmul_peak(BF16, sizes=(1024,))
    flops = flops_per_token(cfg) * B * T

    def fraction(ms: float) -> float:
        return round(flops / (ms / 1e3) / peak, 3)

    kernels = linear + attention + gelu
    print(json.dumps({
        "shape": {"n_layer": cfg.n_layer, "n_embd": C, "n_head": H, "seq_len": T, "batch": B},
        "peak_1024_tflops": round(peak / 1e12, 3),
        "step_ms": round(step, 1),
        "linear_ms": round(linear, 1),
        "linear_best_orientation_ms": round(linear_best, 1),
        "attention_ms": round(attention, 1),
        "gelu_ms": round(gelu, 1),
        "rest_ms": round(step - kernels, 1),
        "step_fraction_of_bf16_peak_1024": fraction(step),
        "floor_ms": round(kernels, 1),
        "floor_fraction_of_bf16_peak_1024": fraction(kernels),
        "best_orientation_floor_fraction": fraction(kernels - linear + linear_best),
        "step_ms_for_60_percent": round(flops / (0.6 * peak) * 1e3, 1),
        "copy_gb_s": round(copy_gb_s(a.repeats), 1),
        "quick": a.quick,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
