"""Training health: skip non-finite steps, warn on spikes, and measure how well the device is used.

A NaN or inf in the loss or the gradient norm poisons the weights for good if it reaches the
optimizer, so such a step is skipped (gradients dropped, nothing updated) with a warning. One
bad batch is survivable; `max_bad_steps` in a row means the run has diverged, and it stops with a
message that names the knobs to turn. Spikes (a loss or gradient norm far above its recent
average) are only warned about: they are often the first sign of a learning rate that is too
high.

MFU (model FLOPs utilisation) = achieved training FLOP/s / the device's peak. FLOPs per token
come from `model.accounting.flops_per_token`; the peak comes from a table of datasheet numbers
for GPUs, and, on a CPU, from a measured large matmul in the compute dtype (no datasheet is
reliable for CPUs: the same chip differs by frequency, cores and AMX/AVX-512 support).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import resource
import sys
import time

import torch

# Dense bf16/fp16 tensor-core peaks (FLOP/s), from the vendors' datasheets (SXM parts).
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "L40S": 362e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


@dataclasses.dataclass
class HealthMonitor:
    """Counts non-finite steps and tracks moving averages of loss and gradient norm."""

    max_bad_steps: int = 5
    warmup_steps: int = 20  # no spike warnings before the averages mean something
    loss_spike_ratio: float = 1.5
    grad_spike_ratio: float = 5.0
    beta: float = 0.95
    bad_in_a_row: int = 0
    skipped_steps: int = 0
    seen: int = 0
    loss_ema: float = 0.0
    grad_ema: float = 0.0

    def is_finite(self, loss: float, grad_norm: float) -> bool:
        return math.isfinite(loss) and math.isfinite(grad_norm)

    def record_bad(self) -> bool:
        """Count a skipped step; True once `max_bad_steps` happened in a row (abort)."""
        self.bad_in_a_row += 1
        self.skipped_steps += 1
        return self.bad_in_a_row >= self.max_bad_steps

    def record_overflow(self) -> None:
        """Count a step the fp16 GradScaler skipped: a normal event, so neither a fault in a row
        nor a sample of the spike averages (its gradient norm is inf)."""
        self.skipped_steps += 1

    def record_good(self, loss: float, grad_norm: float) -> list[str]:
        """Update the averages; returns warnings for a loss or gradient-norm spike."""
        self.bad_in_a_row = 0
        warnings = []
        if self.seen >= self.warmup_steps:
            if loss > self.loss_spike_ratio * self._avg(self.loss_ema):
                warnings.append(
                    f"loss spike: {loss:.4f} vs a recent average of {self._avg(self.loss_ema):.4f}"
                )
            if grad_norm > self.grad_spike_ratio * self._avg(self.grad_ema):
                warnings.append(
                    f"gradient-norm spike: {grad_norm:.3g} vs a recent average of "
                    f"{self._avg(self.grad_ema):.3g}"
                )
        self.seen += 1
        self.loss_ema = self.beta * self.loss_ema + (1 - self.beta) * loss
        self.grad_ema = self.beta * self.grad_ema + (1 - self.beta) * grad_norm
        return warnings

    def _avg(self, ema: float) -> float:
        return ema / (1 - self.beta**self.seen)  # bias-corrected, as in Adam

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


@functools.lru_cache(maxsize=8)
def measured_matmul_peak(device_type: str, dtype: torch.dtype, n: int = 1024) -> float:
    """Best FLOP/s of an n x n matmul in `dtype` on this CPU (0.1 s to measure: dozens of
    matmuls, whose best is stable to a few percent; it is paid at every start)."""
    g = torch.Generator().manual_seed(0)  # never touch the global RNG: runs must stay exact
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    a @ b  # warm up
    best = float("inf")
    deadline = time.perf_counter() + 0.1
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for the device and compute dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                scale = 1.0 if dtype in (torch.bfloat16, torch.float16) else 0.5  # TF32 peak
                return flops * scale, f"datasheet ({key})"
        return math.nan, f"unknown GPU {name!r}"
    if device.type == "cpu":
        return measured_matmul_peak("cpu", dtype), "measured 1024x1024 matmul"
    return math.nan, f"no peak known for {device.type}"


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated on a CUDA device, else peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1e9 if sys.platform == "darwin" else 1e6)
