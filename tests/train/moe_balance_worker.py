"""A 2-rank DDP job of a few optimizer steps of an MoE model with loss-free balancing, run by
tests/train/test_moe_balance.py under torchrun; each rank saves its expert biases.

`run(rank, world_size, accum)` is also called in-process with one rank and 2 micro-batches per
step: both must end with the same biases. Buffers are NOT broadcast by DDP here
(broadcast_buffers=False), so equal biases on both ranks come from the step's all-reduced load,
not from DDP copying rank 0's.
"""

from __future__ import annotations

import sys

import torch

from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.runtime import Launch, make_runtime
from gptlab.train.health import HealthMonitor
from gptlab.train.step import Stepper

CFG = ModelConfig(
    n_layer=2,
    n_head=2,
    n_embd=32,
    seq_len=16,
    vocab_size=40,
    dropout=0.0,
    moe=MoEConfig(n_experts=4, top_k=2, bias_balancing=True, bias_update_rate=0.01),
)
STEPS, PER_STEP, B = 4, 2, 2  # PER_STEP micro-batches of B sequences in every global step


def micro_batch(step: int, i: int) -> tuple[torch.Tensor, torch.Tensor, None]:
    g = torch.Generator().manual_seed(1000 * step + i)
    x = torch.randint(CFG.vocab_size, (B, CFG.seq_len), generator=g)
    return x, torch.roll(x, -1, dims=1), None


def run(rank: int, world_size: int) -> list[torch.Tensor]:
    """Train STEPS steps; returns each MoE layer's expert bias on this rank."""
    runtime = make_runtime(
        "cpu", "float32", launch=Launch(rank=rank, local_rank=rank, world_size=world_size)
    )
    torch.manual_seed(0)
    model = GPT(CFG)
    wrapped = model
    if world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    stepper = Stepper(
        model=model,
        wrapped=wrapped,
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-2),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        health=HealthMonitor(),
        runtime=runtime,
        grad_clip=1.0,
        seed=0,
    )
    accum = PER_STEP // world_size
    for step in range(STEPS):
        mine = iter([micro_batch(step, k * world_size + rank) for k in range(accum)])
        stepper.step(mine, accum, micro_seen=step * PER_STEP)
    return [b.mlp.expert_bias.clone() for b in model.blocks]


if __name__ == "__main__":
    import os

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    biases = run(rank, world)
    torch.save(biases, f"{sys.argv[1]}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
