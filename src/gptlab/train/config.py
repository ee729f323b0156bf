"""TrainConfig (the loop's own settings) and RunConfig, which composes every section.

RunConfig is what the CLI builds, what config.json holds and what a checkpoint stores.
Components receive only their own section.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

from gptlab.data.config import DataConfig, SFTConfig
from gptlab.infer.config import SampleConfig
from gptlab.model.config import LoRAConfig, ModelConfig
from gptlab.optim.config import OptimConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    max_steps: int = 5000
    """Optimizer steps to train for; the LR schedule decays over exactly this many."""
    max_seconds: float = 0.0
    """Wall-time budget in seconds of optimizer steps (evaluation excluded; 0: none). The run
    stops, with a final eval and checkpoint, once it has trained this long, and after warmup
    the LR schedule runs on max(step progress, train time / max_seconds), so it completes at
    the budget (set max_steps high to make time the only budget)."""
    batch_size: int = 64
    """Sequences per micro-batch on each device (the micro-batch size)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (tokens per step = this x batch x seq_len
    x world size); derived instead when global_batch_size or global_batch_tokens is set."""
    global_batch_size: int = 0
    """Sequences per optimizer step over all ranks (0: batch_size x grad_accum_steps x world
    size). Must be a multiple of batch_size x world size; sets grad_accum_steps."""
    global_batch_tokens: int = 0
    """The global batch in tokens instead (a multiple of batch_size x seq_len x world size)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, ~30% more compute."""
    max_bad_steps: int = 5
    """Skip a step whose loss or gradient is NaN/inf; stop after this many in a row."""
    keep_checkpoints: int = 1
    """Checkpoints kept: latest/ only (1), or also step_NNNNNNN/ snapshots of the N most recent
    evaluations (hard links to the same files: no extra disk until latest/ moves on)."""
    eval_interval: int = 250
    """Evaluate (and checkpoint) every this many steps, and after the last step."""
    eval_steps: int = 200
    """Batches in the fixed evaluation set of each split."""
    eval_tasks: str = ""
    """Benchmarks to run at every evaluation too, comma-separated (hellaswag, lambada,
    arc_easy, piqa, ppl:PATH), each on the same seeded subset of eval_tasks_limit examples;
    logged as eval/TASK/METRIC (e.g. eval/hellaswag/acc_norm). Data from GPTLAB_DATA_DIR."""
    eval_tasks_limit: int = 500
    """Examples per task in each in-training benchmark evaluation (a fixed, seeded subset)."""
    log_interval: int = 10
    """Print a progress line every this many steps."""
    init_from: str = ""
    """Start from the weights of a run directory or hf:DIR (gptlab train --init-from): the
    architecture is the source's, the optimizer and step start fresh (docs/interop.md)."""
    seed: int = 1337
    """Seed for init, dropout and batch order: the same seed gives the same run."""
    device: str = "auto"
    """'auto' (cuda, then mps, then cpu), or a torch device such as cpu, cuda, cuda:1, mps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype under autocast; 'auto' = bf16 where fast, else fp32. Weights stay fp32."""
    tf32: bool = True
    """On CUDA, run fp32 matmuls (those outside autocast, or all of them with dtype float32)
    on TF32 tensor cores: ~10 mantissa bits instead of 23, several times faster."""
    compile: bool = False
    """Compile the model with torch.compile (a win on GPUs; little or none on CPUs)."""
    compile_scope: Literal["model", "blocks"] = "model"
    """What --train.compile compiles: the whole model (fuses most, compiles slowest) or each
    transformer block on its own (identical blocks share one compiled graph: much faster to
    compile; FSDP always uses blocks)."""
    compile_optimizer: bool = False
    """Compile Muon's orthogonalisation (its costly part; AdamW is already one fused kernel)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """With torchrun: ddp keeps a full replica per rank; fsdp (FSDP2) shards weights, gradients
    and optimizer state across ranks, for models that do not fit one device."""
    stages: tuple[str, ...] = ()
    """Staged training: 'STEP:key=value,...' entries, each changing from optimizer step STEP on
    any of seq_len, batch_size, grad_accum_steps, global_batch_size, global_batch_tokens,
    e.g. --train.stages 0:seq_len=128 1000:seq_len=256,batch_size=32 (docs/training.md)."""
    out_dir: str = "runs/default"
    """Run directory: config.json, metrics.jsonl and the latest/ and best/ checkpoints."""
    save_checkpoints: bool = True
    """Write latest/ and best/ at each evaluation."""
    loggers: tuple[Literal["tensorboard", "wandb"], ...] = ()
    """Extra metric sinks besides metrics.jsonl (always written): tensorboard writes to
    out_dir/tensorboard, wandb to out_dir/wandb. Needs pip install 'gptlab[tensorboard]' or
    'gptlab[wandb]'; only rank 0 logs."""
    wandb_project: str = "gptlab"
    """W&B project the run is logged under (when loggers includes wandb)."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """'offline' writes out_dir/wandb with no network (upload later with `wandb sync`);
    'online' streams to the W&B server and needs `wandb login`."""

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum_steps",
            "eval_interval",
            "eval_steps",
            "eval_tasks_limit",
            "log_interval",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.out_dir:
            raise ValueError("train.out_dir is empty; give a directory for the run")
        if not self.max_seconds >= 0:  # also rejects NaN
            raise ValueError(
                f"train.max_seconds must be >= 0 (0: no time budget), got {self.max_seconds}"
            )
        for name in ("global_batch_size", "global_batch_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"train.{name} must be >= 0 (0: not set), got {getattr(self, name)}"
                )
        if self.global_batch_size and self.global_batch_tokens:
            raise ValueError(
                "train.global_batch_size and train.global_batch_tokens are both set; give one"
            )
        if self.keep_checkpoints < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.max_bad_steps < 1:
            raise ValueError(f"train.max_bad_steps must be >= 1, got {self.max_bad_steps}")
        for name in self.loggers:
            if name not in ("tensorboard", "wandb"):
                raise ValueError(
                    f"train.loggers: unknown logger {name!r}; choose tensorboard and/or wandb "
                    "(metrics.jsonl is always written)"
                )
        if len(set(self.loggers)) != len(self.loggers):
            raise ValueError(f"train.loggers {self.loggers} names a logger twice; list each once")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"train.strategy {self.strategy!r} must be ddp or fsdp")
        if self.compile_scope not in ("model", "blocks"):
            raise ValueError(f"train.compile_scope {self.compile_scope!r} must be model or blocks")
        parse_stages(self.stages)  # ValueError on a malformed entry
        if self.wandb_mode not in ("offline", "online"):
            raise ValueError(f"train.wandb_mode {self.wandb_mode!r} must be offline or online")
        if not self.wandb_project.strip():
            raise ValueError("train.wandb_project is empty; give a W&B project name")

    def accumulation(self, seq_len: int, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank, derived from the global batch when
        one is set; ValueError when it does not split evenly."""
        per_micro = self.batch_size * world_size  # sequences in one micro-step over all ranks
        if self.global_batch_tokens:
            if self.global_batch_tokens % (per_micro * seq_len):
                raise ValueError(
                    f"train.global_batch_tokens {self.global_batch_tokens} is not a multiple of "
                    f"batch_size {self.batch_size} x seq_len {seq_len} x world size {world_size} "
                    f"= {per_micro * seq_len}; pick a multiple of it"
                )
            return self.global_batch_tokens // (per_micro * seq_len)
        if self.global_batch_size:
            if self.global_batch_size % per_micro:
                raise ValueError(
                    f"train.global_batch_size {self.global_batch_size} is not a multiple of "
                    f"batch_size {self.batch_size} x world size {world_size} = {per_micro}; "
                    "pick a multiple of it"
                )
            return self.global_batch_size // per_micro
        return self.grad_accum_steps

    def shape_at(self, step: int, seq_len: int, world_size: int) -> tuple[int, int, int]:
        """(micro-batch size, context length, micro-batches per step) for optimizer step
        `step` (0-based), after the stages that have begun; ValueError when uneven."""
        active: dict[str, int] = {}
        for start, overrides in parse_stages(self.stages):
            if start <= step:
                if "global_batch_size" in overrides:  # one global batch key replaces the other
                    active["global_batch_tokens"] = 0
                if "global_batch_tokens" in overrides:
                    active["global_batch_size"] = 0
                active |= overrides
        T = active.pop("seq_len", seq_len)
        stage = dataclasses.replace(self, stages=(), **active) if active else self
        return stage.batch_size, T, stage.accumulation(T, world_size)

    def stage_starts(self) -> list[int]:
        """Steps at which a stage begins."""
        return [start for start, _ in parse_stages(self.stages)]

    @property
    def sequences_per_step(self) -> int:
        """Sequences per optimizer step (multiply by seq_len for tokens)."""
        return self.batch_size * self.grad_accum_steps


STAGE_KEYS = (
    "seq_len",
    "batch_size",
    "grad_accum_steps",
    "global_batch_size",
    "global_batch_tokens",
)


@functools.lru_cache(maxsize=16)  # shape_at asks every step: parse each tuple once
def parse_stages(stages: tuple[str, ...]) -> tuple[tuple[int, dict[str, int]], ...]:
    """'STEP:key=value,key=value' entries -> ((step, {key: value}), ...), sorted by step.
    The dicts are shared by every caller: read them, do not change them."""
    out: list[tuple[int, dict[str, int]]] = []
    for entry in stages:
        step, sep, body = entry.partition(":")
        try:
            if not sep or not body:
                raise ValueError
            pairs = [item.split("=") for item in body.split(",")]
            overrides = {k.strip(): int(v) for k, v in pairs}
            start = int(step)
        except ValueError:
            raise ValueError(
                f"train.stages entry {entry!r} is not STEP:key=value[,key=value], "
                "e.g. 1000:seq_len=256,batch_size=32"
            ) from None
        unknown = sorted(set(overrides) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(
                f"train.stages entry {entry!r} sets {unknown[0]!r}; a stage can set "
                + ", ".join(STAGE_KEYS)
            )
        if start < 0 or any(
            v < 0 or (v == 0 and not k.startswith("global")) for k, v in overrides.items()
        ):
            raise ValueError(f"train.stages entry {entry!r} has a negative or zero value")
        out.append((start, overrides))
    starts = [s for s, _ in out]
    if len(set(starts)) != len(starts):
        raise ValueError(f"train.stages {stages} starts two stages at the same step; merge them")
    return tuple(sorted(out, key=lambda item: item[0]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that defines a training run."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    sft: SFTConfig = SFTConfig()
    lora: LoRAConfig = LoRAConfig()

    def __post_init__(self) -> None:
        for _, overrides in parse_stages(self.train.stages):
            if overrides.get("seq_len", 0) > self.model.seq_len:
                raise ValueError(
                    f"train.stages sets seq_len {overrides['seq_len']}, longer than "
                    f"model.seq_len {self.model.seq_len} (the longest context the model has); "
                    "raise --model.seq_len or shorten the stage"
                )
        if self.optim.warmup_steps > self.train.max_steps:
            raise ValueError(
                f"optim.warmup_steps {self.optim.warmup_steps} exceeds train.max_steps "
                f"{self.train.max_steps}; lower the warmup or train longer"
            )
