"""Loss-free MoE balancing across ranks: with 2 gloo ranks (DDP, buffers not broadcast) the
expert bias is identical on both ranks and equals a 1-process run with 2 accumulation steps;
and a run with activation checkpointing and bias balancing trains end to end."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import moe_balance_worker as worker
import pytest
import torch
from safetensors.torch import load_file

from gptlab.model.config import MoEConfig
from gptlab.runtime import make_runtime
from gptlab.train.loop import train


@pytest.mark.slow
def test_two_ranks_share_one_bias_equal_to_accumulation(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        worker.__file__,
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = worker.run(rank=0, world_size=1)  # 1 process, 2 micro-batches per step
    assert any(b.abs().sum() > 0 for b in single)  # the biases moved
    for layer, expected in enumerate(single):
        assert torch.equal(ranks[0][layer], ranks[1][layer])
        torch.testing.assert_close(ranks[0][layer], expected, rtol=0, atol=1e-7)


def test_bias_balancing_trains_with_activation_checkpointing(tiny_run, locations):
    moe = MoEConfig(n_experts=4, top_k=2, bias_balancing=True, bias_update_rate=0.01)
    cfg = dataclasses.replace(
        tiny_run,
        model=dataclasses.replace(tiny_run.model, moe=moe),
        train=dataclasses.replace(
            tiny_run.train, activation_checkpointing=True, max_steps=20, eval_interval=20
        ),
    )
    result = train(cfg, make_runtime("cpu", "float32"), locations)
    losses = [r["train_loss"] for r in result.history if "train_loss" in r]
    assert math.isfinite(result.last_val_loss) and losses[-1] < losses[0]
    weights = load_file(result.run_dir / "latest" / "model.safetensors")
    biases = [v for k, v in weights.items() if k.endswith("expert_bias")]
    assert biases and all(b.abs().sum() > 0 for b in biases)
