"""CUDA training paths: bf16 autocast + torch.compile + flash attention trains like eager fp32
(within bf16's precision), and the runtime's TF32 switch does what docs/training.md says.

The fast path is the one `gptlab train --train.compile` takes on a GPU: the model compiled in
place (as train/job.py's `_compile` does), the forward under the runtime's bf16 autocast, SDPA's
flash kernel for plain causal attention, and torch's fused AdamW. The reference is the same
model, eager, in strict fp32 (TF32 off). bf16 keeps 8 bits of mantissa (relative error about
0.4 % per rounding), so the comparison is statistical, not bitwise:

- losses over 5 optimizer steps: within 1 % of the reference's, step for step;
- the gradients of one step: per parameter, relative error ||g - g_ref|| / ||g_ref|| under 5 %
  and cosine similarity over 0.998; over all parameters together, relative error under 3 %.
"""

from __future__ import annotations

import pytest
import torch
from tests.gpu.conftest import Batch, pattern_batches
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptlab.cli.train import build_config
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.optim.build import build_optimizer
from gptlab.optim.config import OptimConfig
from gptlab.runtime import Runtime, make_runtime
from gptlab.train.health import HealthMonitor
from gptlab.train.step import Stepper

pytestmark = pytest.mark.gpu

# head_dim 32 and T 128: inside what the flash kernel takes (bf16, head_dim a multiple of 8)
CFG = ModelConfig(
    n_layer=2, n_head=4, n_embd=128, seq_len=128, vocab_size=256, dropout=0.0, bias=False
)
STEPS, B = 5, 8
LOSS_RTOL = 1e-2
GRAD_REL_ERR, GRAD_COSINE, TOTAL_GRAD_REL_ERR = 5e-2, 0.998, 3e-2


def batches(n: int, seed: int = 0) -> list[Batch]:
    return pattern_batches(n, B, CFG.seq_len, CFG.vocab_size, seed)


def build(runtime: Runtime, compiled: bool) -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG).to(runtime.device)
    if compiled:
        model.compile()  # in place, as train/job.py's _compile does
    return model.train()


def stepper(model: GPT, runtime: Runtime) -> Stepper:
    optimizer = build_optimizer(model.named_parameters(), OptimConfig(lr=3e-3))  # fused AdamW
    return Stepper(
        model=model,
        wrapped=model,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler),
        health=HealthMonitor(),
        runtime=runtime,
        grad_clip=1.0,
        seed=0,
    )


def losses(model: GPT, runtime: Runtime) -> list[float]:
    s = stepper(model, runtime)
    return [s.step(iter([b]), accum=1, micro_seen=i).loss for i, b in enumerate(batches(STEPS))]


def gradients(model: GPT, runtime: Runtime) -> dict[str, torch.Tensor]:
    """Gradients (fp32, on the CPU) of one batch's loss at the initial weights."""
    x, y, _ = batches(1, seed=1)[0]
    with runtime.autocast():
        loss, _ = model(x.to(runtime.device), y.to(runtime.device))
    loss.backward()
    return {n: p.grad.float().cpu() for n, p in model.named_parameters()}


def assert_close_gradients(fast: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert fast.keys() == ref.keys()
    for name, g in ref.items():
        err = (fast[name] - g).norm() / g.norm()
        cos = torch.nn.functional.cosine_similarity(fast[name].flatten(), g.flatten(), dim=0)
        assert err < GRAD_REL_ERR and cos > GRAD_COSINE, (name, float(err), float(cos))
    a = torch.cat([fast[n].flatten() for n in ref])
    b = torch.cat([g.flatten() for g in ref.values()])
    assert (a - b).norm() / b.norm() < TOTAL_GRAD_REL_ERR


def ran_flash(model: GPT, runtime: Runtime) -> bool:
    """Whether a training forward + backward ran SDPA's flash kernel (profiler op and kernel
    names: aten::_scaled_dot_product_flash_attention, flash_fwd/bwd kernels)."""
    x, y, _ = batches(1, seed=2)[0]
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        with runtime.autocast():
            loss, _ = model(x.to(runtime.device), y.to(runtime.device))
        loss.backward()
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return any("flash" in e.key.lower() for e in prof.key_averages())


def test_bf16_compile_flash_trains_like_eager_fp32(cuda, strict_fp32):
    fp32, bf16 = Runtime(cuda, torch.float32), Runtime(cuda, torch.bfloat16)
    # gptlab picks SDPA (not the math or CPU kernels) for these layers on CUDA in bf16
    for block in build(bf16, compiled=False).blocks:
        assert block.attn.kernel(cuda, torch.bfloat16, CFG.seq_len, False, 0.0) == "sdpa"

    ref_grads, ref_losses = gradients(build(fp32, False), fp32), losses(build(fp32, False), fp32)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # SDPA raises if flash cannot run
        fast = build(bf16, compiled=True)  # one compilation for the three uses below
        fast_grads = gradients(fast, bf16)  # at the initial weights, like the reference's
        assert ran_flash(fast, bf16)  # drops the gradients again: still the initial weights
        fast_losses = losses(fast, bf16)

    assert_close_gradients(fast_grads, ref_grads)
    assert fast_losses == pytest.approx(ref_losses, rel=LOSS_RTOL)
    assert ref_losses[-1] < ref_losses[0] - 0.1  # the steps learn: not a comparison of noise


def test_flash_and_efficient_kernels_agree_eagerly(cuda):
    """The two fused kernels SDPA may pick for bf16 give the same training step's gradients
    (the compiled test above forces flash; a GPU where flash is unavailable would use the
    other one)."""
    bf16 = Runtime(cuda, torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = gradients(build(bf16, compiled=False), bf16)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        efficient = gradients(build(bf16, compiled=False), bf16)
    assert_close_gradients(flash, efficient)


def _matmul_error(n: int = 2048) -> float:
    """Relative (Frobenius) error of an fp32 CUDA matmul against float64: about 4e-4 with
    TF32 (inputs rounded to 10 mantissa bits), about 1e-7 in strict fp32."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)  # (n, n) each
    exact = a.double() @ b.double()
    got = (a.cuda() @ b.cuda()).double().cpu()
    return float((got - exact).norm() / exact.norm())


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_switch_sets_the_matmul_precision(tf32, strict_fp32):
    """`--train.tf32` (default) / `--train.no_tf32` reach torch's flags through make_runtime,
    and the flags change what an fp32 matmul computes."""
    argv = ["--preset", "tiny"] + ([] if tf32 else ["--train.no_tf32"])
    cfg, _, _ = build_config(argv)
    assert cfg.train.tf32 is tf32
    torch.backends.cuda.matmul.allow_tf32 = not tf32  # start from the other setting
    torch.backends.cudnn.allow_tf32 = not tf32
    runtime = make_runtime("cuda", "float32", tf32=cfg.train.tf32)
    assert runtime.device.type == "cuda" and runtime.compute_dtype == torch.float32
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    err = _matmul_error()
    assert (err > 1e-4) if tf32 else (err < 1e-5), err
