"""The training loop: data -> model -> AdamW steps, with evaluation, logging and checkpoints.

One function, `train(cfg, runtime, locations)`, runs a whole job. Each optimizer step
accumulates `grad_accum_steps` micro-batches, clips the global gradient norm, sets the LR from
the schedule and steps AdamW. Every `eval_interval` steps (and after the last) it measures the
loss on fixed train and val batches, appends to metrics.jsonl and writes `latest/` (and `best/`
on a new best val loss). Resuming restores model, optimizer, grad scaler, loader and RNG state,
so on a CPU a resumed run repeats an uninterrupted one loss for loss.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptlab import checkpoint
from gptlab.config import from_dict, to_dict
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
from gptlab.runtime import Runtime, seed_everything
from gptlab.train import checks
from gptlab.train.config import RunConfig
from gptlab.train.health import HealthMonitor, peak_flops, peak_memory_gb
from gptlab.train.loggers import build_loggers, close_loggers
from gptlab.train.memory import available_memory, enable_activation_checkpointing, estimate_memory

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


def _rng_state(runtime: Runtime) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def _set_rng_state(state: dict[str, Any], runtime: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def _rewrite_metrics_until(path: Path, step: int) -> None:
    """Drop metric rows past `step` (written by a run that crashed after its last checkpoint)."""
    if not path.exists():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in rows if json.loads(ln).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept))
    tmp.replace(path)


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
    accum = tc.accumulation(cfg.model.seq_len, runtime.world_size)  # ValueError if uneven

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
    data_dir = prepare(cfg.data, locations, progress=True)
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
    try:
        loader = build_loader(
            cfg.data.loader,
            train_data,
            tc.batch_size,
            T,
            seed=tc.seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
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

    seed_everything(tc.seed)
    model = GPT(cfg.model).to(runtime.device)
    if tc.activation_checkpointing:
        enable_activation_checkpointing(model)
    health = HealthMonitor(max_bad_steps=tc.max_bad_steps)
    optimizer = build_optimizer(model.named_parameters(), cfg.optim)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)
    start_step, best_val = 0, math.inf
    if resume:
        checkpoint.load_weights(model, ckpt_latest)
        opt_state = checkpoint.load_pt(ckpt_latest, checkpoint.OPTIMIZER)
        state = checkpoint.load_pt(ckpt_latest, checkpoint.STATE)
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError) as e:
            raise GptlabError(
                f"optimizer state in {ckpt_latest} does not fit this model ({e})"
            ) from None
        scaler.load_state_dict(state["scaler"])
        health.load_state_dict(state.get("health", {}))
        if state["loader"].get("kind", "random") != cfg.data.loader:
            raise GptlabError(
                f"--resume cannot change data.loader: the checkpoint used "
                f"{state['loader'].get('kind', 'random')!r}; drop the override"
            )
        loader.load_state_dict(state["loader"])
        _set_rng_state(state["rng"], runtime)
        start_step, best_val = state["step"], state["best_val_loss"]
        _rewrite_metrics_until(run_dir / METRICS, start_step)
        log.info("resumed from %s at step %d", ckpt_latest, start_step)

    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = to_dict(cfg)
    (run_dir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    fwd_model = torch.compile(model) if tc.compile else model
    counts = count_params(model)
    tokens_per_step = accum * tc.batch_size * runtime.world_size * T
    active = f" ({counts.active / 1e6:.2f}M active)" if counts.active != counts.total else ""
    log.info(
        "model: %.2fM parameters%s, %.2f MFLOPs/token (train) | %s | %d tokens/step",
        counts.total / 1e6,
        active,
        flops_per_token(cfg.model) / 1e6,
        runtime.describe(),
        tokens_per_step,
    )
    memory = estimate_memory(
        cfg.model,
        counts.total,
        tc.batch_size,
        autocast=runtime.compute_dtype != runtime.param_dtype,
        optimizer_bytes_per_param=8.0,
        activation_checkpointing=tc.activation_checkpointing,
    )
    log.info("memory estimate per device: %s", memory.describe(available_memory(runtime.device)))
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
    metrics_file = open(run_dir / METRICS, "a", encoding="utf-8")  # noqa: SIM115
    history: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        history.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        for sink in sinks:
            sink.log(row, step=row["step"])

    def save(name: str, step: int) -> None:
        checkpoint.save(
            run_dir / name,
            model,
            config_dict,
            optimizer_state=optimizer.state_dict(),
            trainer_state={
                "step": step,
                "best_val_loss": best_val,
                "rng": _rng_state(runtime),
                "loader": {"kind": cfg.data.loader, **loader.state_dict()},
                "scaler": scaler.state_dict(),
                "health": health.state_dict(),
            },
            extra_files={name: data_dir / name for name in tokenizer_files},
        )

    last_val = math.nan
    t_log, step_log = time.perf_counter(), start_step
    t_train, eval_s = t_log, 0.0  # time in the step loop, and the part spent evaluating
    model.train()
    try:
        for step in range(start_step, tc.max_steps):
            lr = apply_schedule(optimizer, step, tc.max_steps, cfg.optim)["lr"]  # lr, wd, momentum
            loss_sum = torch.zeros((), device=runtime.device)
            for _ in range(accum):
                x, y, starts = loader.next_batch()  # (B, T) each; starts None or bool
                x, y = x.to(runtime.device), y.to(runtime.device)
                kw = {"doc_starts": starts.to(runtime.device)} if starts is not None else {}
                with runtime.autocast():
                    loss, stats = fwd_model(x, y, **kw)
                scaler.scale(loss / accum).backward()
                loss_sum += loss.detach()
            scaler.unscale_(optimizer)  # a no-op without fp16 loss scaling
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm_t = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            step_loss, grad_norm = (loss_sum / accum).item(), grad_norm_t.item()  # one sync
            # fp16: an inf gradient is the scaler's normal signal to lower its scale, not a fault
            scaler_handles_it = scaler.is_enabled() and math.isfinite(step_loss)
            if health.is_finite(step_loss, grad_norm) or scaler_handles_it:
                scaler.step(optimizer)
                scaler.update()
                for warning in health.record_good(step_loss, grad_norm):
                    log.warning("step %d: %s", step + 1, warning)
            else:
                scaler.update()
                log.warning(
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

            if on_step is not None or done % tc.log_interval == 0:
                loss_val = stats["ce"].item()  # next-token loss, without MTP/MoE terms
                if on_step is not None:
                    on_step(done, loss_val)
            if done % tc.log_interval == 0:
                now = time.perf_counter()
                dt = (now - t_log) / max(1, done - step_log)
                t_log, step_log = now, done
                elapsed = now - t_start
                eta = (tc.max_steps - done) * dt
                record(
                    {
                        "step": done,
                        "train_loss": loss_val,
                        "lr": lr,
                        "ms_per_step": dt * 1e3,
                        "tokens_per_s": tokens_per_step / dt,
                        "elapsed_s": elapsed,
                        "grad_norm": grad_norm,
                        "mfu": train_flops * tokens_per_step / dt / peak,
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
                    lr,
                    grad_norm,
                    dt * 1e3,
                    tokens_per_step / dt,
                    100 * train_flops * tokens_per_step / dt / peak,
                    elapsed,
                    eta,
                )
            if done % tc.eval_interval == 0 or done == tc.max_steps:
                t_eval = time.perf_counter()
                results = {
                    split: evaluate(
                        fwd_model, batches, runtime.device, runtime.autocast, token_bytes
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
                        "elapsed_s": time.perf_counter() - t_start,
                        "train_time_s": t_eval - t_train - eval_s,  # optimizer steps only
                    }
                )
                if tc.save_checkpoints:
                    save("latest", done)
                    if tc.keep_checkpoints > 1:
                        checkpoint.snapshot(run_dir, "latest", done, tc.keep_checkpoints)
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
