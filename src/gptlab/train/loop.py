"""The training loop: data -> model -> optimizer steps, with evaluation, logging and checkpoints.

One function, `train(cfg, runtime, locations)`, runs a whole job, on one process or on every
rank of a torchrun job (train/distributed.py). The pieces live beside it, one idea each:
`inputs.py` (data and loader), `step.py` (one optimizer step: accumulation, sync, clipping,
skipping), `evaluation.py` (the periodic eval), `metrics.py` (metrics.jsonl and the console),
`resume.py` (what a checkpoint restores). Every `eval_interval` steps (and after the last) the
loop evaluates, logs, and writes `latest/` (and `best/` on a new best val loss).

Exactness: micro-batch i of the run (counted over all ranks) gets its data and its dropout
randomness from (seed, i) alone. Resuming restores model, optimizer, schedule position, grad
scaler, loader position and each rank's RNG state, so on a CPU a resumed run repeats an
uninterrupted one loss for loss, and W ranks x A micro-batches match 1 rank x W A.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab import checkpoint
from gptlab.config import from_dict, to_dict
from gptlab.data.registry import Locations
from gptlab.errors import GptlabError
from gptlab.infer.load import LORA_BASE
from gptlab.model.accounting import count_params, flops_per_token
from gptlab.model.gpt import GPT
from gptlab.model.lora import adapter_state
from gptlab.optim.build import build_optimizer
from gptlab.optim.schedule import apply_schedule, schedule_step
from gptlab.runtime import Runtime
from gptlab.train import adapters, checks, distributed
from gptlab.train.config import RunConfig
from gptlab.train.evaluation import PeriodicEval, check_benchmarks
from gptlab.train.health import HealthMonitor, peak_flops, peak_memory_gb
from gptlab.train.inputs import RunData, eval_batches, loader_kind, open_data, train_loader
from gptlab.train.lock import hold_run_dir
from gptlab.train.memory import enable_activation_checkpointing, memory_plan
from gptlab.train.metrics import METRICS, MetricsLog, log_eval, log_step
from gptlab.train.resume import (
    Progress,
    restore_loader,
    restore_progress,
    rewrite_metrics_until,
    rng_state,
    sequences_per_step,
    set_rng_state,
)
from gptlab.train.step import Stepper, batch_stream, extra_metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float
    last_val_loss: float
    elapsed_s: float
    history: list[dict[str, Any]]  # the metrics rows written by this process


def _compile(model: nn.Module, scope: str) -> None:
    """torch.compile in place (nn.Module.compile): parameter names, hence checkpoints, keep no
    `_orig_mod.` prefix."""
    if scope == "blocks":
        for block in [*model.blocks, *model.mtp]:
            block.compile()
    else:
        model.compile()


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


@contextlib.contextmanager
def _explain_oom(where: str, B: int, T: int) -> Iterator[None]:
    """Turn an out-of-memory error (CUDA's or the CPU allocator's) into one line naming the
    knobs that lower memory."""
    try:
        yield
    except Exception as e:
        if not _out_of_memory(e):
            raise
        raise GptlabError(
            f"out of memory in {where} with a micro-batch of {B} sequences x {T} tokens; lower "
            "--train.batch_size (set --train.global_batch_size to keep the batch per step "
            "through more accumulation), turn on --train.activation_checkpointing, or train a "
            "smaller model or --model.seq_len"
        ) from None


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
class _Job:
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


def train(
    cfg: RunConfig,
    runtime: Runtime,
    locations: Locations,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    on_start: Callable[[RunConfig], None] | None = None,
) -> TrainResult:
    """Run (or resume) the training job described by `cfg`; returns a summary.

    `on_start(cfg)` is called once every check has passed and the data is ready, with the config
    the run will train (the data's vocab_size in it); the CLI prints its summary there, so a
    refused run prints only its error. `on_step(step, loss)` is called after every optimizer
    step (tests use it to simulate a crash).
    """
    checks.check_parallel(cfg, runtime)
    adapters.check_lora(cfg, runtime)
    with hold_run_dir(Path(cfg.train.out_dir), runtime):  # one trainer per run directory
        return _train(cfg, runtime, locations, resume, on_step, on_start)


def _train(
    cfg: RunConfig,
    runtime: Runtime,
    locations: Locations,
    resume: bool,
    on_step: Callable[[int, float], None] | None,
    on_start: Callable[[RunConfig], None] | None,
) -> TrainResult:
    t_start = time.perf_counter()
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
    job = _Job(cfg, runtime, data, model, stepper, loader, evaluate, metrics, progress, config_dict)
    if lora_record is not None and runtime.is_main_rank:
        job.lora_base = adapters.write_base_record(run_dir, lora_record)
    _log_plan(job)
    try:
        last_val = _run_steps(job, t_start, on_step)
    finally:
        job.metrics.close()
    elapsed = time.perf_counter() - t_start
    best = job.progress.best_val_loss
    steps = job.progress.step  # max_steps, or fewer when the time budget ran out
    log.info("done: %d steps in %.1fs, best val loss %.4f", steps, elapsed, best)
    return TrainResult(run_dir, steps, best, last_val, elapsed, job.metrics.history)


def _log_plan(job: _Job) -> None:
    """Size, FLOPs, batch, memory estimate and the MFU reference, before step 0."""
    cfg, rt = job.cfg, job.runtime
    counts = count_params(job.model)
    B, T, accum = cfg.train.shape_at(job.progress.step, cfg.model.seq_len, rt.world_size)
    active = f" ({counts.active / 1e6:.2f}M active)" if counts.active != counts.total else ""
    log.info(
        "model: %.2fM parameters%s, %.2f MFLOPs/token (train) | %s | %d tokens/step",
        counts.total / 1e6,
        active,
        flops_per_token(cfg.model) / 1e6,
        rt.describe(),
        accum * B * rt.world_size * T,
    )
    log.info("memory estimate per device: %s", memory_plan(cfg, rt, counts.total, model=job.model))


def _slowest(seconds: float, runtime: Runtime) -> float:
    """The largest of every rank's `seconds` (one tiny all-reduce)."""
    t = torch.tensor([seconds], dtype=torch.float64, device=runtime.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


def _run_steps(job: _Job, t_start: float, on_step: Callable[[int, float], None] | None) -> float:
    """Optimizer steps from the job's progress to max_steps; returns the last val loss."""
    cfg, rt, p = job.cfg, job.runtime, job.progress
    tc, W = cfg.train, rt.world_size
    warn = log.warning if rt.is_main_rank else log.debug  # the same on every rank: say once
    peak, peak_source = peak_flops(rt.device, rt.compute_dtype)
    log.info("MFU is measured against %.2f TFLOP/s (%s)", peak / 1e12, peak_source)
    train_flops = flops_per_token(cfg.model)  # per token, forward + backward
    batches = batch_stream(job.loader.next_batch)
    last_val = math.nan
    t_log, step_log = time.perf_counter(), p.step
    t_train, eval_s = t_log, 0.0  # time in the step loop, and the part spent evaluating
    trained_before = p.train_time_s  # optimizer-step seconds of earlier processes (resume)

    def train_time() -> float:  # seconds in optimizer steps, over the whole run
        seconds = trained_before + time.perf_counter() - t_train - eval_s
        if tc.max_seconds and rt.distributed:  # ranks' clocks differ: all take the slowest's,
            seconds = _slowest(seconds, rt)  # so they set the same lr and stop at the same step
        return seconds

    if tc.max_seconds and trained_before >= tc.max_seconds:
        return last_val  # resumed a run whose time budget was already spent (and evaluated)
    job.model.train()
    for step in range(p.step, tc.max_steps):
        B, T, accum = tc.shape_at(step, cfg.model.seq_len, W)
        if (job.loader.batch_size, job.loader.seq_len) != (B, T):  # a stage begins
            try:
                job.loader.set_shape(B, T)
            except ValueError as e:  # e.g. a window longer than the data
                raise GptlabError(f"the stage from step {step}: {e}") from None
            log.info("step %d: micro-batch %d x %d tokens, %d per step", step, B, T, accum)
        # the clock at this step's start sets its lr; whether the time is up was decided at the
        # end of the last step (deciding here too would stop without a final evaluation)
        p.train_time_s = train_time()
        at = schedule_step(
            step, tc.max_steps, p.train_time_s, tc.max_seconds, cfg.optim.warmup_steps
        )
        sched = apply_schedule(job.stepper.optimizer, at, tc.max_steps, cfg.optim)
        with _explain_oom(f"training step {step + 1}", B, T):
            result = job.stepper.step(batches, accum, p.micro_batches, step + 1)
        p.step, p.micro_batches, p.tokens = (
            step + 1,
            p.micro_batches + accum * W,
            p.tokens + accum * W * B * T,
        )
        for warning in result.warnings:
            warn("step %d: %s", p.step, warning)
        if on_step is not None:
            on_step(p.step, result.ce)
        p.train_time_s = train_time()
        out_of_time = tc.max_seconds > 0 and p.train_time_s >= tc.max_seconds
        if p.step % tc.log_interval == 0 and not result.empty:  # an empty step has no loss
            now = time.perf_counter()
            dt = (now - t_log) / max(1, p.step - step_log)
            t_log, step_log = now, p.step
            tokens_per_step = accum * B * W * T
            row = {
                "step": p.step,
                "train_loss": result.ce,  # next-token loss, mean over the step
                "tokens": p.tokens,  # training tokens so far, all ranks
                **sched,
                "ms_per_step": dt * 1e3,
                "tokens_per_s": tokens_per_step / dt,
                "elapsed_s": now - t_start,
                "grad_norm": result.grad_norm,
                "mfu": train_flops * tokens_per_step / dt / (peak * W),  # per device
                "peak_mem_gb": peak_memory_gb(rt.device),
                "skipped_steps": job.stepper.health.skipped_steps,
                **_chat_metrics(job, result),
                **extra_metrics(result.stats),
            }
            job.metrics.record(row)
            log_step(row, tc.max_steps, p.train_time_s, tc.max_seconds)
        if p.step % tc.eval_interval == 0 or p.step == tc.max_steps or out_of_time:
            t_eval = time.perf_counter()
            last_val = _evaluate_and_save(job, t_start, p.train_time_s)
            eval_time = time.perf_counter() - t_eval  # evaluation and checkpointing
            t_log += eval_time  # kept out of ms/step and train_time_s
            eval_s += eval_time
        if out_of_time:
            log.info("time budget of %gs reached at step %d", tc.max_seconds, p.step)
            break
    return last_val


def _chat_metrics(job: _Job, result: Any) -> dict[str, Any]:
    """A chat run's supervised targets in the step and its steps skipped for having none."""
    if not job.cfg.sft.enabled:
        return {}
    seen = job.loader.stats()  # this rank's batches so far: real and padding tokens of x
    positions = max(1, seen["tokens"] + seen["padding_tokens"])
    return {
        "supervised_tokens": result.targets,  # targets trained on in this step, all ranks
        "empty_steps": job.stepper.empty_steps,
        "real_tokens": seen["tokens"] * job.runtime.world_size,  # so far, not padding
        "pad_fraction": seen["padding_tokens"] / positions,  # of the positions computed
    }


def _evaluate_and_save(job: _Job, t_start: float, train_time_s: float) -> float:
    """Evaluate, record, write `latest/` (and `best/`); returns the val loss."""
    p, tc = job.progress, job.cfg.train
    with _explain_oom(f"evaluation after step {p.step}", tc.batch_size, job.cfg.model.seq_len):
        results = job.evaluate(job.model)
        benchmarks = job.evaluate.benchmarks(job.model)  # {} unless --train.eval_tasks
    val = results["val"]["loss"]
    is_best = val < p.best_val_loss
    p.best_val_loss = min(p.best_val_loss, val)
    row = {
        "step": p.step,
        "train_eval_loss": results["train"]["loss"],
        "val_loss": val,
        "val_bpb": results["val"]["bpb"],
        "tokens": p.tokens,
        "elapsed_s": time.perf_counter() - t_start,
        "train_time_s": train_time_s,  # optimizer steps only
        **benchmarks,
    }
    job.metrics.record(row)
    if tc.save_checkpoints:
        job.save("latest")
        if is_best:
            job.save("best")
    log_eval(row, is_best)
    return val


def load_run_config(path: Path) -> RunConfig:
    """The RunConfig stored in a checkpoint directory."""
    try:
        return from_dict(RunConfig, checkpoint.load_config(path))
    except ValueError as e:
        raise GptlabError(f"checkpoint {path} holds an invalid config ({e})") from None
