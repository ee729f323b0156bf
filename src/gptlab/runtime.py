"""Runtime: the device and dtypes a run uses, decided once and passed down explicitly.

Parameters stay fp32 (master weights); the compute dtype is what autocast runs matmuls in.
On CUDA, fp32 matmuls that remain (outside autocast) use TF32 tensor cores unless told not to.
'auto' picks bf16 on CUDA GPUs that support it, fp16 on older ones, and on a CPU measures
whether bf16 matmuls are actually faster than fp32 (true on CPUs with AVX512-BF16 or AMX, where
they are 4-7x faster; false elsewhere, where bf16 is emulated and slower).

A torchrun worker also arranges to exit when its launcher dies (`exit_with_launcher`): torchrun
starts each worker in a session of its own, so killing the launcher alone (kill -9, the OOM
killer) would otherwise leave the workers training, and writing the run directory, as orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import random
import signal
import sys
import threading
import time

import torch

from gptlab.errors import ConfigError
from gptlab.seeding import mix_seed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Runtime:
    device: torch.device
    compute_dtype: torch.dtype
    param_dtype: torch.dtype = torch.float32
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank within this node: picks the GPU

    @property
    def distributed(self) -> bool:
        """More than one process (launched by torchrun): gradients are averaged across ranks."""
        return self.world_size > 1

    @property
    def is_main_rank(self) -> bool:
        return self.rank == 0

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 has too little range for small gradients: scale the loss (bf16 does not need it)."""
        return self.compute_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype == self.param_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def describe(self) -> str:
        ranks = f", rank {self.rank} of {self.world_size}" if self.distributed else ""
        return (
            f"device {self.device}, compute dtype "
            f"{str(self.compute_dtype).removeprefix('torch.')}{ranks}"
        )


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun job (torchrun's RANK, LOCAL_RANK, WORLD_SIZE), and
    whether torchrun started it at all (its TORCHELASTIC_RUN_ID is set)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    is_torchrun_worker: bool = False  # started by torchrun's agent: it ends when the agent dies


def pick_device(requested: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; otherwise the named device, checked to exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(
            f"train.device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device is 'cuda' but no CUDA GPU is visible; use --train.device cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is 'mps' but MPS is not available; use --train.device cpu")
    return device


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """Measured fp32-time / bf16-time for a 512x512 matmul on this CPU (about 20 ms to run)."""

    def best_time(dtype: torch.dtype) -> float:
        a = torch.ones(512, 512, dtype=dtype)
        a @ a  # warm up kernels
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
        return best

    return best_time(torch.float32) / best_time(torch.bfloat16)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.lru_cache(maxsize=1)
def keep_freed_host_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves every large allocation (above 32 MB at most) with its own mmap and
    unmaps it when freed, so each training step's activations arrive as fresh pages that the
    kernel must fault in and zero, page by page, at every step. At the shakespeare_char shape
    on a 2-core CPU that costs about a quarter of the step. With mmap off and trimming off,
    freed blocks go back to malloc's heap and the next step reuses them. The process then
    keeps its peak memory until it exits, which a training run does anyway.

    Returns whether it applied (glibc only: not on macOS, Windows or musl).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1: never trim
    except (OSError, AttributeError):
        return False


# prctl(2) option (linux/prctl.h): the signal this process gets when its parent exits
_PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=1)
def exit_with_launcher(poll_s: float = 1.0) -> str:
    """Send this process SIGTERM when its parent (the torchrun launcher) dies; returns how.

    SIGTERM is what torchrun itself sends to stop its workers; with no handler installed it ends
    the process at once. Linux arms the kernel's parent-death signal ("prctl"); other POSIX
    systems poll os.getppid(), which changes when the parent dies ("watchdog"). On Windows the
    parent id never changes, so nothing is done there ("none").

    A launcher that dies between the two reads of the parent id below is caught by the second.
    One that dies earlier, while the worker still imports torch, is missed: the worker has been
    adopted by then and nothing records who its parent was. It then waits in
    init_process_group for the launcher's store, which is gone, until that times out, and never
    reaches the training loop (measured: workers whose launcher was killed 0.3 s after starting
    them were still waiting 90 s later).
    """
    if sys.platform == "win32":
        return "none"
    parent = os.getppid()
    how = "prctl" if _set_parent_death_signal(signal.SIGTERM) else "watchdog"
    if how == "watchdog":
        _watch_parent(parent, poll_s)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
    return how


def _set_parent_death_signal(sig: signal.Signals) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, poll_s: float) -> None:
    """A daemon thread that sends this process SIGTERM once its parent is no longer `parent`
    (an orphan is adopted by init or a subreaper, which changes os.getppid())."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gptlab-parent-watchdog", daemon=True).start()


def pick_compute_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        dtype = DTYPES[requested]
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bfloat16 support; use --train.dtype float16")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_speedup() >= 1.5:
        return torch.bfloat16
    return torch.float32


def make_runtime(
    device: str = "auto", dtype: str = "auto", launch: Launch | None = None, tf32: bool = True
) -> Runtime:
    """The Runtime for this process. Under torchrun (`launch.world_size > 1`) it also joins the
    process group (NCCL on GPUs, gloo on CPUs; torchrun's MASTER_ADDR/PORT say where) and takes
    GPU `local_rank` of its node. A torchrun worker also exits when its launcher dies."""
    launch = launch or Launch()
    if launch.is_torchrun_worker:
        exit_with_launcher()  # armed first: joining the group waits on the launcher's store
    dev = pick_device(device)
    if dev.type == "cpu":
        keep_freed_host_memory()  # activations live in host memory: reuse it across steps
    if dev.type == "cuda":
        if launch.world_size > 1:
            dev = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = tf32  # fp32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = tf32
    if launch.world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(
            backend, rank=launch.rank, world_size=launch.world_size
        )
    return Runtime(
        device=dev,
        compute_dtype=pick_compute_dtype(dtype, dev),
        rank=launch.rank,
        world_size=launch.world_size,
        local_rank=launch.local_rank,
    )


def close_runtime(runtime: Runtime) -> None:
    """Leave the process group (a no-op for a single process)."""
    if runtime.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def seed_micro_batch(seed: int, index: int) -> None:
    """Reseed dropout (and any other global-RNG use) for global micro-batch `index`.

    The randomness of micro-batch i is then a function of (seed, i) alone, whichever rank runs
    it and however many ranks there are: 2 ranks x 1 micro-batch equals 1 rank x 2, and a
    resumed run, on any world size, draws what the uninterrupted run would have drawn."""
    torch.manual_seed(mix_seed(seed, 0x6D6963, index))


def seed_everything(seed: int) -> None:
    """Seed torch's (CPU and CUDA) and Python's global generators, used by dropout and init."""
    random.seed(seed)
    torch.manual_seed(seed)
