"""The training loop: data -> model -> optimizer steps, with evaluation, logging and checkpoints.

One function, `train(cfg, runtime, locations)`, runs a whole job, on one process or on every
rank of a torchrun job (train/distributed.py). Each optimizer step accumulates micro-batches
(gradients are averaged across ranks on the last one), clips the global gradient norm, sets
lr, weight decay and momentum from the schedule and steps the optimizer. Every
`eval_interval` steps (and after the last) it measures the loss on fixed train and val batches,
appends to metrics.jsonl and writes `latest/` (and `best/` on a new best val loss).

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
from gptlab.data.config import DataConfig
from gptlab.data.loader import build_loader, fixed_batches
from gptlab.data.prepare import prepare
from gptlab.data.registry import Locations
from gptlab.data.shards import load_meta, open_split
from gptlab.errors import GptlabError
from gptlab.eval.loss import evaluate
from gptlab.model.accounting import count_params, flops_per_token
from gptlab.model.gpt import GPT
from gptlab.optim.build import build_optimizer
from gptlab.optim.schedule import apply_schedule
from gptlab.runtime import Runtime, seed_everything, seed_micro_batch
from gptlab.train import checks, distributed
from gptlab.train.config import RunConfig
from gptlab.train.health import HealthMonitor, peak_flops, peak_memory_gb
from gptlab.train.loggers import build_loggers, close_loggers
from gptlab.train.memory import enable_activation_checkpointing, memory_plan
from gptlab.train.resume import (
    restore_loader,
    rewrite_metrics_until,
    rng_state,
    sequences_per_step,
    set_rng_state,
)

log = logging.getLogger(__name__)

METRICS = checks.METRICS


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float
    last_val_loss: float
    elapsed_s: float
    history: list[dict[str, Any]]  # the metrics rows written by this process


def _prepare_data(data_cfg: DataConfig, locations: Locations, runtime: Runtime) -> Path:
    """Tokenize once: rank 0 prepares (or finds) the shards while the others wait, then reuse."""
    if runtime.is_main_rank:
        data_dir = prepare(data_cfg, locations, progress=True)
    distributed.barrier(runtime)
    if not runtime.is_main_rank:
        data_dir = prepare(data_cfg, locations)  # finds rank 0's shards (a shared filesystem)
    return data_dir


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


def train(
    cfg: RunConfig,
    runtime: Runtime,
    locations: Locations,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run (or resume) the training job described by `cfg`; returns a summary.

    `on_step(step, loss)` is called after every optimizer step (tests use it to simulate a crash).
    """
    t_start = time.perf_counter()
    tc, run_dir = cfg.train, Path(cfg.train.out_dir)
    ckpt_latest = run_dir / "latest"
    W, rank = runtime.world_size, runtime.rank
    warn = log.warning if runtime.is_main_rank else log.debug  # the same on every rank: say once
    checks.check_parallel(cfg, runtime)

    stored_cfg = None
    if resume:
        if not checkpoint.resolve(ckpt_latest).is_dir():
            raise GptlabError(
                f"cannot resume: no checkpoint at {ckpt_latest}; check --train.out_dir or "
                "start without --resume"
            )
        stored_cfg = checkpoint.load_config(ckpt_latest)
    else:
        checks.check_fresh_run_dir(run_dir)

    # Data first: the tokenizer fixes the vocabulary size of the model.
    data_dir = _prepare_data(cfg.data, locations, runtime)
    meta = load_meta(data_dir)
    tok = checks.data_tokenizer(data_dir, meta, cfg)
    if meta["vocab_size"] != cfg.model.vocab_size:
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, vocab_size=meta["vocab_size"])
        )
    if stored_cfg is not None:
        checks.check_same_optimizer(stored_cfg, cfg)
        checks.check_same_data(stored_cfg, cfg, meta)
        checks.check_same_architecture(stored_cfg["model"], cfg.model)
    T = cfg.model.seq_len
    train_data, val_data = open_split(data_dir, "train"), open_split(data_dir, "val")
    for split, data in (("train", train_data), ("val", val_data)):
        if data.n_tokens < T + 1:
            raise GptlabError(
                f"the {split} split of {cfg.data.dataset} has {data.n_tokens} tokens, fewer than "
                f"one window of model.seq_len + 1 = {T + 1}; use more text or a smaller "
                "--model.seq_len"
            )
    B0, T0, _ = tc.shape_at(0, T, W)
    try:
        loader = build_loader(
            cfg.data.loader,
            train_data,
            B0,
            T0,
            seed=tc.seed,
            rank=rank,
            world_size=W,
            with_doc_starts=cfg.model.doc_mask,
        )
    except ValueError as e:
        raise GptlabError(str(e)) from None
    eval_sets = {  # the same windows at every eval; document starts only for doc_mask models
        split: fixed_batches(
            data, tc.eval_steps, tc.batch_size, T, tc.seed + k, with_doc_starts=cfg.model.doc_mask
        )
        for k, (split, data) in enumerate((("train", train_data), ("val", val_data)), start=1)
    }
    token_bytes = torch.from_numpy(tok.token_bytes()).long()  # (V,) for bits per byte

    seed_everything(tc.seed)  # the same initial weights on every rank
    model = GPT(cfg.model).to(runtime.device)
    state: dict[str, Any] = {}
    if resume:
        checkpoint.load_weights(model, ckpt_latest)
        opt_state = checkpoint.load_pt(ckpt_latest, checkpoint.OPTIMIZER)
        state = checkpoint.load_pt(ckpt_latest, checkpoint.STATE)
    if tc.activation_checkpointing:
        enable_activation_checkpointing(model)
    fsdp = runtime.distributed and tc.strategy == "fsdp"
    if tc.compile and (fsdp or tc.compile_scope == "blocks"):
        _compile(model, "blocks")  # before fully_shard, as FSDP2 expects
    wrapped = distributed.wrap_model(model, tc.strategy, runtime)  # DDP, or FSDP in place
    if tc.compile and not fsdp and tc.compile_scope == "model":
        _compile(wrapped, "model")  # the DDP wrapper too: its graph breaks at gradient buckets
    health = HealthMonitor(max_bad_steps=tc.max_bad_steps)
    optimizer = build_optimizer(
        model.named_parameters(),
        cfg.optim,
        compile_orthogonalize=tc.compile_optimizer,
        # Muon's orthogonalisation in bf16 wherever the run computes in bf16 (fast on CPUs too)
        orthogonalize_dtype=torch.bfloat16 if runtime.compute_dtype == torch.bfloat16 else None,
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)
    start_step, best_val, micro_seen, tokens_seen = 0, math.inf, 0, 0
    if resume:
        try:
            distributed.load_optimizer_state(model, optimizer, opt_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise GptlabError(
                f"optimizer state in {ckpt_latest} does not fit this model ({e})"
            ) from None
        scaler.load_state_dict(state["scaler"])
        health.load_state_dict(state.get("health", {}))
        restore_loader(loader, state, cfg.data.loader, runtime)
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rng) == W:  # each rank's own generators; micro-batches reseed anyway
            set_rng_state(rng[rank], runtime)
        start_step, best_val = state["step"], state["best_val_loss"]
        saved_world = state.get("world_size", 1)
        saved_micro = start_step * tc.shape_at(0, T, saved_world)[2] * saved_world  # older files
        micro_seen = state.get("micro_batches", saved_micro)
        tokens_seen = state.get("tokens", saved_micro * B0 * T0)
        if saved_world != W:
            log.info("resuming a %d-process run on %d processes", saved_world, W)
        # the shape of the step before the checkpoint, here (a stage may begin at start_step)
        before, (B1, _, accum1) = state.get("sequences_per_step"), tc.shape_at(start_step - 1, T, W)
        if before is not None and before != B1 * accum1 * W:
            warn(
                "the global batch changes from %d to %d sequences per step on resume; set "
                "--train.global_batch_size %d to keep it",
                before,
                B1 * accum1 * W,
                before,
            )
        if runtime.is_main_rank:
            rewrite_metrics_until(run_dir / METRICS, start_step)
        log.info("resumed from %s at step %d", ckpt_latest, start_step)

    config_dict = to_dict(cfg)
    if runtime.is_main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    counts = count_params(model)
    _, _, accum0 = tc.shape_at(start_step, T, W)
    active = f" ({counts.active / 1e6:.2f}M active)" if counts.active != counts.total else ""
    log.info(
        "model: %.2fM parameters%s, %.2f MFLOPs/token (train) | %s | %d tokens/step",
        counts.total / 1e6,
        active,
        flops_per_token(cfg.model) / 1e6,
        runtime.describe(),
        accum0 * B0 * W * T0,
    )
    log.info("memory estimate per device: %s", memory_plan(cfg, runtime, counts.total))
    peak, peak_source = peak_flops(runtime.device, runtime.compute_dtype)
    train_flops = flops_per_token(cfg.model)  # per token, forward + backward
    log.info("MFU is measured against %.2f TFLOP/s (%s)", peak / 1e12, peak_source)

    tokenizer_files = meta.get("tokenizer_files", ["tokenizer.json"])
    sinks = (  # TensorBoard / W&B beside metrics.jsonl; built first, so a missing one fails here
        build_loggers(
            tc.loggers,
            run_dir,
            config_dict,
            start_step=start_step,
            wandb_project=tc.wandb_project,
            wandb_mode=tc.wandb_mode,
        )
        if runtime.is_main_rank
        else []
    )
    metrics_file = (
        open(run_dir / METRICS, "a", encoding="utf-8")  # noqa: SIM115
        if runtime.is_main_rank
        else None
    )
    history: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        if metrics_file is None:
            return
        history.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        for sink in sinks:
            sink.log(row, step=row["step"])

    def save(name: str, step: int) -> None:
        # collectives first (FSDP gathers shards), on every rank; then rank 0 writes
        weights = distributed.full_model_state(model)
        opt_state = distributed.full_optimizer_state(model, optimizer)
        rng = distributed.gather_objects(rng_state(runtime), runtime)
        loader_states = distributed.gather_objects(loader.state_dict(), runtime)
        if runtime.is_main_rank:
            checkpoint.save(
                run_dir / name,
                model,
                config_dict,
                weights=weights,
                optimizer_state=opt_state,
                trainer_state={
                    "step": step,
                    "best_val_loss": best_val,
                    "world_size": W,
                    "micro_batches": micro_seen,
                    "tokens": tokens_seen,
                    "sequences_per_step": sequences_per_step(tc, step - 1, T, W),
                    "rng": rng,  # one entry per rank
                    "loader": {"kind": cfg.data.loader, "ranks": loader_states},
                    "scaler": scaler.state_dict(),
                    "health": health.state_dict(),
                },
                extra_files={name: data_dir / name for name in tokenizer_files},
            )
            if name == "latest" and tc.keep_checkpoints > 1:
                checkpoint.snapshot(run_dir, "latest", step, tc.keep_checkpoints)
        distributed.barrier(runtime)

    last_val = math.nan
    t_log, step_log = time.perf_counter(), start_step
    t_train, eval_s = t_log, 0.0  # time in the step loop, and the part spent evaluating
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    model.train()
    try:
        for step in range(start_step, tc.max_steps):
            B, T_step, accum = tc.shape_at(step, T, W)
            if (loader.batch_size, loader.seq_len) != (B, T_step):  # a stage begins
                loader.set_shape(B, T_step)
                log.info("step %d: micro-batch %d x %d tokens, %d per step", step, B, T_step, accum)
            sched = apply_schedule(optimizer, step, tc.max_steps, cfg.optim)  # lr, wd, momentum
            with _explain_oom(f"training step {step + 1}", B, T_step):
                sums = torch.zeros(2, device=runtime.device)  # training loss, next-token loss
                for k in range(accum):
                    x, y, starts = loader.next_batch()  # (B, T) each; starts None or bool
                    x, y = x.to(runtime.device), y.to(runtime.device)
                    kw = {"doc_starts": starts.to(runtime.device)} if starts is not None else {}
                    seed_micro_batch(tc.seed, micro_seen + k * W + rank)  # dropout of batch i
                    with distributed.gradient_sync(wrapped, enabled=k == accum - 1):
                        with runtime.autocast():
                            loss, stats = wrapped(x, y, **kw)
                        scaler.scale(loss / accum).backward()
                    sums += torch.stack([loss.detach(), stats["ce"]])
                micro_seen += accum * W
                tokens_seen += accum * W * B * T_step
                scaler.unscale_(optimizer)  # a no-op without fp16 loss scaling
                grad_norm_t = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            means = distributed.mean_across_ranks(sums / accum, runtime)
            step_loss, loss_val = means.tolist()  # one sync; the same on every rank
            grad_norm = distributed.local_value(grad_norm_t).item()
            # fp16: an inf gradient is the scaler's normal signal to lower its scale, not a fault
            scaler_handles_it = scaler.is_enabled() and math.isfinite(step_loss)
            if health.is_finite(step_loss, grad_norm) or scaler_handles_it:
                with _explain_oom(f"the optimizer step of step {step + 1}", B, T_step):
                    scaler.step(optimizer)  # the first step allocates the optimizer state
                scaler.update()
                for warning in health.record_good(step_loss, grad_norm):
                    warn("step %d: %s", step + 1, warning)
            else:
                scaler.update()
                warn(
                    "step %d skipped: loss %s, gradient norm %s (%d in a row)",
                    step + 1,
                    step_loss,
                    grad_norm,
                    health.bad_in_a_row + 1,
                )
                if health.record_bad():
                    raise GptlabError(
                        f"training diverged: {health.bad_in_a_row} steps in a row had a "
                        f"non-finite loss or gradient (last at step {step + 1}); lower "
                        "--optim.lr, raise --optim.warmup_steps or use --train.dtype bfloat16 "
                        "instead of float16, then resume from the last checkpoint"
                    )
            optimizer.zero_grad(set_to_none=True)
            done = step + 1

            if on_step is not None:
                on_step(done, loss_val)
            if done % tc.log_interval == 0:
                now = time.perf_counter()
                dt = (now - t_log) / max(1, done - step_log)
                t_log, step_log = now, done
                elapsed = now - t_start
                tokens_per_step = accum * B * W * T_step
                mfu = train_flops * tokens_per_step / dt / (peak * W)  # per device
                record(
                    {
                        "step": done,
                        "train_loss": loss_val,  # next-token loss, mean over the step
                        "tokens": tokens_seen,  # training tokens so far, all ranks
                        **sched,
                        "ms_per_step": dt * 1e3,
                        "tokens_per_s": tokens_per_step / dt,
                        "elapsed_s": elapsed,
                        "grad_norm": grad_norm,
                        "mfu": mfu,
                        "peak_mem_gb": peak_memory_gb(runtime.device),
                        "skipped_steps": health.skipped_steps,
                        **_extra_metrics(stats),
                    }
                )
                log.info(
                    "step %5d/%d (%3.0f%%) | loss %.4f | lr %.2e | gnorm %.3f | %.1f ms/step | "
                    "%.0f tok/s | mfu %.1f%% | elapsed %.0fs, eta %.0fs",
                    done,
                    tc.max_steps,
                    100 * done / tc.max_steps,
                    loss_val,
                    sched["lr"],
                    grad_norm,
                    dt * 1e3,
                    tokens_per_step / dt,
                    100 * mfu,
                    elapsed,
                    (tc.max_steps - done) * dt,
                )
            if done % tc.eval_interval == 0 or done == tc.max_steps:
                t_eval = time.perf_counter()
                with _explain_oom(f"evaluation after step {done}", tc.batch_size, T):
                    results = {
                        split: evaluate(
                            model,
                            batches,
                            runtime.device,
                            runtime.autocast,
                            token_bytes,
                            rank=rank,
                            world_size=W,
                        )
                        for split, batches in eval_sets.items()
                    }
                losses = {split: r["loss"] for split, r in results.items()}
                last_val = losses["val"]
                is_best = last_val < best_val
                best_val = min(best_val, last_val)
                record(
                    {
                        "step": done,
                        "train_eval_loss": losses["train"],
                        "val_loss": last_val,
                        "val_bpb": results["val"]["bpb"],
                        "tokens": tokens_seen,
                        "elapsed_s": time.perf_counter() - t_start,
                        "train_time_s": t_eval - t_train - eval_s,  # optimizer steps only
                    }
                )
                if tc.save_checkpoints:
                    save("latest", done)
                    if is_best:
                        save("best", done)
                log.info(
                    "eval step %d | train %.4f | val %.4f | val bpb %.4f%s",
                    done,
                    losses["train"],
                    last_val,
                    results["val"]["bpb"],
                    " (best)" if is_best else "",
                )
                eval_time = time.perf_counter() - t_eval  # evaluation and checkpointing
                t_log += eval_time  # kept out of ms/step and train_time_s
                eval_s += eval_time
    finally:
        if metrics_file is not None:
            metrics_file.close()
        close_loggers(sinks)
    elapsed = time.perf_counter() - t_start
    log.info("done: %d steps in %.1fs, best val loss %.4f", tc.max_steps, elapsed, best_val)
    return TrainResult(run_dir, tc.max_steps, best_val, last_val, elapsed, history)


def _extra_metrics(stats: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The last micro-batch's MoE and MTP statistics as plain numbers (for metrics.jsonl)."""
    out: dict[str, Any] = {}
    for name, value in stats.items():
        if name == "ce":
            continue
        if name == "moe_tokens_per_expert":
            load = value.float()
            out["moe_load"] = [round(v, 4) for v in (load / load.sum()).tolist()]
        else:
            out[name] = value.item()
    return out


def load_run_config(path: Path) -> RunConfig:
    """The RunConfig stored in a checkpoint directory."""
    try:
        return from_dict(RunConfig, checkpoint.load_config(path))
    except ValueError as e:
        raise GptlabError(f"checkpoint {path} holds an invalid config ({e})") from None
