"""FSDP2 on one GPU, over a 1-process NCCL group: the sharded model (built on the meta device
and initialised shard by shard, as train/distributed.py does for `--train.strategy fsdp`) holds
what GPT(cfg) holds, and trains step for step like the plain model.

One process is the smallest real FSDP2 job: every parameter is a DTensor, every block is
all-gathered before use and its gradients reduce-scattered after, through NCCL, exactly as with
more ranks, only with a mesh of one. (The train loop itself applies FSDP only when torchrun
starts more than one process, so these tests drive distributed.py's pieces directly.) In fp32
the sharded steps equal the plain ones to fp32 rounding; in bf16 FSDP's mixed-precision policy
casts every gathered weight to bf16 while the plain model runs under autocast, which keeps some
operations (norms, the loss) in fp32, so the comparison allows bf16's precision.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tests.gpu.conftest import Batch, pattern_batches
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.optim.build import build_optimizer
from gptlab.optim.config import OptimConfig
from gptlab.runtime import Runtime, seed_everything
from gptlab.train import distributed
from gptlab.train.health import HealthMonitor
from gptlab.train.step import Stepper

pytestmark = pytest.mark.gpu

CFG = ModelConfig(
    n_layer=2, n_head=4, n_embd=128, seq_len=64, vocab_size=256, dropout=0.0, bias=False
)
SEED, STEPS, B = 7, 4, 8


@pytest.fixture
def nccl_group(tmp_path: Path, cuda):
    """A 1-process NCCL process group for the test (a file store: no ports, no torchrun)."""
    torch.cuda.set_device(cuda)
    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, device_id=cuda
    )
    yield
    dist.destroy_process_group()


def batches(n: int, seed: int = 0) -> list[Batch]:
    return pattern_batches(n, B, CFG.seq_len, CFG.vocab_size, seed)


def plain_model(runtime: Runtime) -> GPT:
    seed_everything(SEED)
    return GPT(CFG).to(runtime.device)


def sharded_model(runtime: Runtime) -> GPT:
    """What distributed.build_model does under FSDP: meta device, shard, allocate, init."""
    seed_everything(SEED)
    with torch.device("meta"):
        model = GPT(CFG)  # shapes only
    distributed.shard_model(model, runtime)
    model.to_empty(device=runtime.device)
    distributed.init_shards(model)
    return model


def train_losses(model: GPT, runtime: Runtime) -> list[float]:
    optimizer = build_optimizer(model.named_parameters(), OptimConfig(lr=3e-3))
    stepper = Stepper(
        model=model,
        wrapped=model,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda", enabled=False),
        health=HealthMonitor(),
        runtime=runtime,
        grad_clip=1.0,
        seed=SEED,
    )
    return [
        stepper.step(iter([b]), accum=1, micro_seen=i).loss for i, b in enumerate(batches(STEPS))
    ]


def full_weights(model: GPT) -> dict[str, torch.Tensor]:
    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().float().cpu()
        for n, p in model.named_parameters()
    }


def test_meta_built_shards_hold_what_gpt_holds(nccl_group, cuda):
    runtime = Runtime(cuda, torch.float32)
    sharded = sharded_model(runtime)
    assert isinstance(sharded, FSDPModule)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    plain, shards = full_weights(plain_model(runtime)), full_weights(sharded)
    assert plain.keys() == shards.keys()
    for name, w in plain.items():
        torch.testing.assert_close(shards[name], w, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"]
)
def test_fsdp_steps_equal_the_plain_run(nccl_group, cuda, strict_fp32, dtype, rtol):
    runtime = Runtime(cuda, dtype)
    plain, sharded = plain_model(runtime), sharded_model(runtime)
    plain_losses, sharded_losses = train_losses(plain, runtime), train_losses(sharded, runtime)
    assert sharded_losses == pytest.approx(plain_losses, rel=rtol)
    assert plain_losses[-1] < plain_losses[0]  # the steps moved the weights
    if dtype == torch.float32:  # and they moved them alike
        a, b = full_weights(sharded), full_weights(plain)
        for name, w in b.items():
            torch.testing.assert_close(a[name], w, rtol=1e-4, atol=1e-6, msg=name)
