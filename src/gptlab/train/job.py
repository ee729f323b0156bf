"""A training job: what the loop works on, how it is built before step 0, and its checkpoints.

`build_job` does everything `train` needs before the first step: the checks of the run
directory, the data and a resumed checkpoint (so a refused run fails before a model is built),
then the model (wrapped for DDP or FSDP, compiled), the optimizer, the stepper and the metrics
log. `Job` holds them while the loop runs; `Job.save` writes a checkpoint and `_restore` reads
one back. Kept apart from loop.py so the loop reads as the step loop alone; nothing here reads
the clock, which stays with the loop (tests replace loop.py's `time` with a fake one).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab import checkpoint
from gptlab.config import to_dict
from gptlab.data.registry import Locations
from gptlab.errors import GptlabError
from gptlab.infer.load import LORA_BASE
from gptlab.model.gpt import GPT
from gptlab.model.lora import adapter_state
from gptlab.optim.build import build_optimizer
from gptlab.runtime import Runtime
from gptlab.train import adapters, checks, distributed
from gptlab.train.config import RunConfig
from gptlab.train.evaluation import PeriodicEval, check_benchmarks
from gptlab.train.health import HealthMonitor
from gptlab.train.inputs import RunData, eval_batches, loader_kind, open_data, train_loader
from gptlab.train.memory import enable_activation_checkpointing
from gptlab.train.metrics import METRICS, MetricsLog
from gptlab.train.resume import (
    Progress,
    restore_loader,
    restore_progress,
    rewrite_metrics_until,
    rng_state,
    sequences_per_step,
    set_rng_state,
)
from gptlab.train.step import Stepper

log = logging.getLogger(__name__)


def _compile(model: nn.Module, scope: str) -> None:
    """torch.compile in place (nn.Module.compile): parameter names, hence checkpoints, keep no
    `_orig_mod.` prefix."""
    if scope == "blocks":
        for block in [*model.blocks, *model.mtp]:
            block.compile()
    else:
        model.compile()


def _build_model(cfg: RunConfig, runtime: Runtime) -> tuple[GPT, nn.Module]:
    """(the model, the module its training forward runs through: itself, DDP or FSDP). Under
    FSDP the model is built on the meta device and only this rank's shards are materialised."""
    tc = cfg.train
    fsdp = runtime.distributed and tc.strategy == "fsdp"

    def before_wrap(model: GPT) -> None:
        if cfg.lora.enabled:  # adapters before DDP, so it registers only them as trained
            adapters.add_adapters(model, cfg)
        if tc.activation_checkpointing:
            enable_activation_checkpointing(model)
        if tc.compile and (fsdp or tc.compile_scope == "blocks"):
            _compile(model, "blocks")  # before fully_shard, as FSDP2 expects

    model, wrapped = distributed.build_model(cfg.model, tc.strategy, runtime, tc.seed, before_wrap)
    if tc.compile and not fsdp and tc.compile_scope == "model":
        _compile(wrapped, "model")  # the DDP wrapper too: its graph breaks at gradient buckets
    return model, wrapped


@dataclasses.dataclass
class Job:
    """Everything one training job holds while it runs."""

    cfg: RunConfig
    runtime: Runtime
    data: RunData
    model: GPT
    stepper: Stepper
    loader: Any
    evaluate: PeriodicEval
    metrics: MetricsLog
    progress: Progress
    config_dict: dict[str, Any]
    lora_base: Path | None = None  # a LoRA run's lora_base.json, copied into each checkpoint

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    def save(self, name: str) -> None:
        """Write checkpoint `name` ("latest" or "best"). Collectives first, on every rank (FSDP
        gathers shards); then rank 0 writes."""
        rt, tc, p, s = self.runtime, self.cfg.train, self.progress, self.stepper
        weights = distributed.full_model_state(self.model)
        extra = {n: self.data.data_dir / n for n in self.data.tokenizer_files}
        if self.lora_base is not None:  # a LoRA checkpoint holds the adapters only
            weights = adapter_state(self.model)
            extra[LORA_BASE] = self.lora_base
        opt_state = distributed.full_optimizer_state(self.model, s.optimizer)
        rng = distributed.gather_objects(rng_state(rt), rt)
        loader_states = distributed.gather_objects(self.loader.state_dict(), rt)
        if rt.is_main_rank:
            checkpoint.save(
                self.run_dir / name,
                self.model,
                self.config_dict,
                weights=weights,
                optimizer_state=opt_state,
                trainer_state={
                    **dataclasses.asdict(p),
                    "max_steps": tc.max_steps,
                    "world_size": rt.world_size,
                    "sequences_per_step": sequences_per_step(
                        tc, p.step - 1, self.cfg.model.seq_len, rt.world_size
                    ),
                    "rng": rng,  # one entry per rank
                    "loader": {"kind": loader_kind(self.cfg), "ranks": loader_states},
                    "scaler": s.scaler.state_dict(),
                    "health": s.health.state_dict(),
                    "empty_steps": s.empty_steps,
                },
                extra_files=extra,
            )
            if name == "latest" and tc.keep_checkpoints > 1:
                checkpoint.snapshot(self.run_dir, "latest", p.step, tc.keep_checkpoints)
        distributed.barrier(rt)


def _restore(
    ckpt: Path, cfg: RunConfig, runtime: Runtime, stepper: Stepper, loader: Any
) -> Progress:
    """Continue from checkpoint `ckpt`: optimizer, scaler, health, loader position and RNG (the
    weights are loaded before the optimizer is built); returns where the run stands."""
    rt, s = runtime, stepper
    state = checkpoint.load_pt(ckpt, checkpoint.STATE)
    try:
        distributed.load_optimizer_state(
            s.model, s.optimizer, checkpoint.load_pt(ckpt, checkpoint.OPTIMIZER)
        )
    except (ValueError, KeyError, RuntimeError) as e:
        raise GptlabError(f"optimizer state in {ckpt} does not fit this model ({e})") from None
    s.scaler.load_state_dict(state["scaler"])
    s.health.load_state_dict(state.get("health", {}))
    s.empty_steps = state.get("empty_steps", 0)
    restore_loader(loader, state, loader_kind(cfg), rt)
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(rng) == rt.world_size:  # each rank's own generators; micro-batches reseed anyway
        set_rng_state(rng[rt.rank], rt)
    progress = restore_progress(state, cfg.train, cfg.model.seq_len, rt)
    if rt.is_main_rank:
        rewrite_metrics_until(Path(cfg.train.out_dir) / METRICS, progress.step)
    log.info("resumed from %s at step %d", ckpt, progress.step)
    return progress


def build_job(
    cfg: RunConfig,
    runtime: Runtime,
    locations: Locations,
    resume: bool,
    on_start: Callable[[RunConfig], None] | None,
) -> Job:
    """Check, open and build everything a run needs before its first step (see `train`)."""
    tc, run_dir = cfg.train, Path(cfg.train.out_dir)
    stored_cfg = None
    if resume:
        if not checkpoint.resolve(run_dir / "latest").is_dir():
            raise GptlabError(
                f"cannot resume: no checkpoint at {run_dir / 'latest'}; check --train.out_dir or "
                "start without --resume"
            )
        stored_cfg = checkpoint.load_config(run_dir / "latest")
    else:
        checks.check_fresh_run_dir(run_dir)
    check_benchmarks(tc, locations.data_dir)  # a missing file fails now, not at the first eval

    cfg, data = open_data(cfg, locations, runtime, resume)  # its tokenizer fixes the vocab size
    lora = cfg.lora.enabled
    init = None
    if tc.init_from and (lora or not resume):  # a LoRA run resumes on its base's weights
        init = distributed.open_init_source(cfg, data.tokenizer)
        if lora:
            adapters.check_base_shapes(cfg, init.cfg)
    if stored_cfg is not None:
        checks.check_same_optimizer(stored_cfg, cfg)
        checks.check_same_data(stored_cfg, cfg, data.meta)
        checks.check_same_architecture(stored_cfg["model"], cfg.model)
    loader = train_loader(cfg, data, runtime)
    if on_start is not None:
        on_start(cfg)
    evaluate = PeriodicEval(
        eval_batches(cfg, data),
        tc,
        data.token_bytes,
        runtime,
        tokenizer=data.tokenizer,
        data_dir=locations.data_dir,
    )
    lora_record = adapters.base_record(cfg) if lora else None
    if lora and resume:
        adapters.check_base(checkpoint.resolve(run_dir / "latest"), lora_record)
    model, wrapped = _build_model(cfg, runtime)
    if init is not None:  # --init-from: the source's weights, a fresh optimizer and step 0
        distributed.load_init_weights(model, init)
    if resume:  # the checkpoint's weights: all of them, or a LoRA run's adapters
        distributed.load_weights(model, run_dir / "latest", adapters_only=lora)
    optimizer = build_optimizer(
        adapters.trainable(model),
        cfg.optim,
        compile_orthogonalize=tc.compile_optimizer,
        # Muon's orthogonalisation in bf16 wherever the run computes in bf16 (fast on CPUs too)
        orthogonalize_dtype=torch.bfloat16 if runtime.compute_dtype == torch.bfloat16 else None,
    )
    stepper = Stepper(
        model=model,
        wrapped=wrapped,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler),
        health=HealthMonitor(max_bad_steps=tc.max_bad_steps),
        runtime=runtime,
        grad_clip=cfg.optim.grad_clip,
        seed=tc.seed,
        masked=cfg.sft.enabled,
    )
    progress = _restore(run_dir / "latest", cfg, runtime, stepper, loader) if resume else Progress()
    config_dict = to_dict(cfg)
    if runtime.is_main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    metrics = MetricsLog(
        run_dir,
        tc.loggers,
        config_dict,
        start_step=progress.step,
        wandb_project=tc.wandb_project,
        wandb_mode=tc.wandb_mode,
        enabled=runtime.is_main_rank,
    )
    job = Job(cfg, runtime, data, model, stepper, loader, evaluate, metrics, progress, config_dict)
    if lora_record is not None and runtime.is_main_rank:
        job.lora_base = adapters.write_base_record(run_dir, lora_record)
    return job
