"""TrainConfig (the loop's own settings) and RunConfig, which composes every section.

RunConfig is what the CLI builds, what config.json holds and what a checkpoint stores.
Components receive only their own section.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from gptlab.data.config import DataConfig
from gptlab.infer.config import SampleConfig
from gptlab.model.config import ModelConfig
from gptlab.optim.config import OptimConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    max_steps: int = 5000
    """Optimizer steps to train for; the LR schedule decays over exactly this many."""
    batch_size: int = 64
    """Sequences per micro-batch."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (tokens per step = this x batch x seq_len)."""
    eval_interval: int = 250
    """Evaluate (and checkpoint) every this many steps, and after the last step."""
    eval_steps: int = 200
    """Batches in the fixed evaluation set of each split."""
    log_interval: int = 10
    """Print a progress line every this many steps."""
    seed: int = 1337
    """Seed for init, dropout and batch order: the same seed gives the same run."""
    device: str = "auto"
    """'auto' (cuda, then mps, then cpu), or a torch device such as cpu, cuda, cuda:1, mps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype under autocast; 'auto' = bf16 where fast, else fp32. Weights stay fp32."""
    compile: bool = False
    """Compile the model with torch.compile (a win on GPUs; little or none on CPUs)."""
    out_dir: str = "runs/default"
    """Run directory: config.json, metrics.jsonl and the latest/ and best/ checkpoints."""
    save_checkpoints: bool = True
    """Write latest/ and best/ at each evaluation."""

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum_steps",
            "eval_interval",
            "eval_steps",
            "log_interval",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.out_dir:
            raise ValueError("train.out_dir is empty; give a directory for the run")

    @property
    def sequences_per_step(self) -> int:
        """Sequences per optimizer step (multiply by seq_len for tokens)."""
        return self.batch_size * self.grad_accum_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that defines a training run."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()

    def __post_init__(self) -> None:
        if self.optim.warmup_steps > self.train.max_steps:
            raise ValueError(
                f"optim.warmup_steps {self.optim.warmup_steps} exceeds train.max_steps "
                f"{self.train.max_steps}; lower the warmup or train longer"
            )
