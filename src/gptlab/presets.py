"""Named presets: plain functions returning a RunConfig. Add one by writing a function.

`shakespeare_char` is nanoGPT's GPU recipe; `shakespeare_char_cpu` is tuned to learn Shakespeare
on a 2-core laptop CPU in well under a minute; `tiny` is for tests.
"""

from __future__ import annotations

from collections.abc import Callable

from gptlab.data.config import DataConfig
from gptlab.model.config import ModelConfig
from gptlab.optim.config import OptimConfig
from gptlab.train.config import RunConfig, TrainConfig


def shakespeare_char() -> RunConfig:
    """nanoGPT's shakespeare_char: 6 layers, 6 heads, 384 wide, context 256, dropout 0.2."""
    return RunConfig(
        model=ModelConfig(n_layer=6, n_head=6, n_embd=384, seq_len=256, dropout=0.2, bias=False),
        data=DataConfig(dataset="shakespeare_char"),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, beta2=0.99, warmup_steps=100),
        train=TrainConfig(
            max_steps=5000,
            batch_size=64,
            eval_interval=250,
            eval_steps=200,
            log_interval=10,
            out_dir="runs/shakespeare_char",
        ),
    )


def shakespeare_char_cpu() -> RunConfig:
    """A small char model that reaches val loss < 1.88 on 2 CPU cores in well under a minute.

    Tuned on a 2-core Xeon (bf16 autocast) for the shortest wall time to val loss 1.88: at this
    budget a wide, shallow model (2 x 256) beat 4 x 128, 6 x 128, 3 x 192 and 2 x 320; lr 4e-3
    beat 2e-3, 3e-3, 5e-3 and 6e-3; no weight decay beat 0.1; batch 32 beat 16, 24 and 64 per
    second of wall time. Sweep log and figures: docs/quickstart.md.
    """
    return RunConfig(
        model=ModelConfig(n_layer=2, n_head=4, n_embd=256, seq_len=64, dropout=0.0, bias=False),
        data=DataConfig(dataset="shakespeare_char"),
        optim=OptimConfig(lr=4e-3, min_lr=4e-4, weight_decay=0.0, beta2=0.99, warmup_steps=30),
        train=TrainConfig(
            max_steps=480,
            batch_size=32,
            eval_interval=480,
            eval_steps=25,
            log_interval=40,
            out_dir="runs/shakespeare_char_cpu",
        ),
    )


def tiny() -> RunConfig:
    """A 2-layer, 32-wide model for tests: trains in a second."""
    return RunConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=32, dropout=0.0),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=5),
        train=TrainConfig(
            max_steps=20,
            batch_size=8,
            eval_interval=10,
            eval_steps=2,
            log_interval=5,
            device="cpu",
            dtype="float32",
            out_dir="runs/tiny",
        ),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "shakespeare_char": shakespeare_char,
    "shakespeare_char_cpu": shakespeare_char_cpu,
    "tiny": tiny,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
