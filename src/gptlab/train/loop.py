"""The training loop: data -> model -> optimizer steps, with evaluation, logging and checkpoints.

One function, `train(cfg, runtime, locations)`, runs a whole job, on one process or on every
rank of a torchrun job (train/distributed.py). The pieces live beside it, one idea each:
`job.py` (building the model, data, optimizer and stepper; writing checkpoints), `inputs.py`
(data and loader), `step.py` (one optimizer step: accumulation, sync, clipping, skipping),
`evaluation.py` (the periodic eval), `metrics.py` (metrics.jsonl and the console), `resume.py`
(what a checkpoint restores), `oom.py` (out-of-memory errors as one actionable line). Every
`eval_interval` steps (and after the last) the loop evaluates, logs, and writes `latest/` (and
`best/` on a new best val loss). The loop's clock readings (step times, the time budget,
elapsed_s) all stay in this module, where tests replace `time` with a fake clock.

Exactness: micro-batch i of the run (counted over all ranks) gets its data and its dropout
randomness from (seed, i) alone. Resuming restores model, optimizer, schedule position, grad
scaler, loader position and each rank's RNG state, so on a CPU a resumed run repeats an
uninterrupted one loss for loss, and W ranks x A micro-batches match 1 rank x W A.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptlab import checkpoint
from gptlab.config import from_dict
from gptlab.data.registry import Locations
from gptlab.errors import GptlabError
from gptlab.model.accounting import count_params, flops_per_token
from gptlab.optim.schedule import apply_schedule, schedule_step
from gptlab.runtime import Runtime
from gptlab.train import adapters, checks
from gptlab.train.config import RunConfig
from gptlab.train.health import peak_flops, peak_memory_gb
from gptlab.train.job import Job, build_job
from gptlab.train.lock import hold_run_dir
from gptlab.train.memory import memory_plan
from gptlab.train.metrics import log_eval, log_step
from gptlab.train.oom import explain_oom
from gptlab.train.step import batch_stream, extra_metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float
    last_val_loss: float
    elapsed_s: float
    history: list[dict[str, Any]]  # the metrics rows written by this process


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
    job = build_job(cfg, runtime, locations, resume, on_start)
    _log_plan(job)
    try:
        last_val = _run_steps(job, t_start, on_step)
    finally:
        job.metrics.close()
    elapsed = time.perf_counter() - t_start
    best = job.progress.best_val_loss
    steps = job.progress.step  # max_steps, or fewer when the time budget ran out
    log.info("done: %d steps in %.1fs, best val loss %.4f", steps, elapsed, best)
    return TrainResult(job.run_dir, steps, best, last_val, elapsed, job.metrics.history)


def _log_plan(job: Job) -> None:
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


def _run_steps(job: Job, t_start: float, on_step: Callable[[int, float], None] | None) -> float:
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
        with explain_oom(f"training step {step + 1}", B, T):
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


def _chat_metrics(job: Job, result: Any) -> dict[str, Any]:
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


def _evaluate_and_save(job: Job, t_start: float, train_time_s: float) -> float:
    """Evaluate, record, write `latest/` (and `best/`); returns the val loss."""
    p, tc = job.progress, job.cfg.train
    with explain_oom(f"evaluation after step {p.step}", tc.batch_size, job.cfg.model.seq_len):
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
