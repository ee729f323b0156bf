"""One optimizer step: accumulate micro-batches, sync, clip, then step or skip.

    g = (1 / A) sum_{k<A} grad loss(batch_k)      A micro-batches (per rank), averaged across ranks
    g <- g * min(1, clip / ||g||)                 global-norm clipping
    theta <- optimizer(theta, g)                  unless the loss or ||g|| is not finite

Gradients are averaged across ranks on the last micro-batch only (DDP's no_sync before it).
A step whose loss or gradient norm is NaN/inf is skipped: nothing is updated, the gradients are
dropped, and `max_bad_steps` such steps in a row abort the run. Under fp16 loss scaling an inf
gradient is the GradScaler's normal signal to lower its scale: that step is skipped too (the
scaler skips it) and counted, but it is not a fault and does not enter the spike averages.

Chat finetuning (`masked`) trains only on some targets (the assistant's tokens; the others are
-1), so micro-batches hold different numbers of them. The step's loss is then the mean over
every supervised target of the global batch, sum_k sum_t CE / N with N counted over all
micro-batches and ranks before the first backward, not a mean of per-row or per-micro-batch
means (which would weight a short reply like a long one). A step with N = 0 is skipped and
counted (`empty`), never trained on a NaN or a silent zero.

Loss-free MoE balancing (DeepSeek-V3) updates each expert's bias here, once per optimizer step,
from the load of the whole global batch (every micro-batch, summed across ranks), and never
inside the forward: activation checkpointing recomputes a forward during backward, and that
recompute must route exactly as the first pass did.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from gptlab.errors import GptlabError
from gptlab.runtime import Runtime, seed_micro_batch
from gptlab.train import distributed
from gptlab.train.health import HealthMonitor

# (x, y, doc_starts or None), each (B, T)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclasses.dataclass
class StepResult:
    loss: float  # the training objective, mean over the step's micro-batches and ranks
    ce: float  # its next-token cross-entropy part
    grad_norm: float  # before clipping; inf/nan when the step was skipped for it
    skipped: bool  # nothing was updated
    overflow: bool  # skipped by the fp16 GradScaler (a normal event, not a fault)
    warnings: list[str]  # loss or gradient-norm spikes, non-finite steps
    stats: dict[str, torch.Tensor]  # the last micro-batch's model statistics (MoE, MTP)
    targets: int = 0  # supervised targets in the step over all ranks (masked steps only)
    empty: bool = False  # a masked step with no supervised target: skipped


@dataclasses.dataclass
class Stepper:
    """What an optimizer step needs; built once per run, called once per step.

    `model` is the bare module (parameters, MoE biases); `wrapped` is what runs the forward
    (the same module, or its DDP wrapper)."""

    model: nn.Module
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    health: HealthMonitor
    runtime: Runtime
    grad_clip: float  # 0: no clipping
    seed: int
    masked: bool = False  # targets of -1 are not trained on: normalise by supervised targets
    empty_steps: int = 0  # masked steps skipped for having no supervised target

    def step(
        self, batches: Iterator[Batch], accum: int, micro_seen: int, step: int = 0
    ) -> StepResult:
        """Accumulate `accum` micro-batches from `batches`, then update (or skip) once.

        `micro_seen` counts the run's micro-batches so far over all ranks: micro-batch i gets
        its dropout randomness from (seed, i), so the step is the same on any world size.
        `step` (1-based) only names the step in an abort message."""
        rt, W = self.runtime, self.runtime.world_size
        micro: Iterator[Batch] | list[Batch] = batches
        weights = [1 / accum] * accum  # each micro-batch's share of the step's loss
        n_targets = 0
        if self.masked:
            micro = [next(batches) for _ in range(accum)]
            counts = [int((y >= 0).sum()) for _, y, _ in micro]
            n_targets = int(distributed.sum_across_ranks(torch.tensor(float(sum(counts))), rt))
            if n_targets == 0:
                return self._skip_empty()
            weights = [c * W / n_targets for c in counts]  # DDP averages over the W ranks
        micro = iter(micro)
        sums = torch.zeros(2, device=rt.device)  # training loss, next-token loss
        loads: torch.Tensor | None = None  # (L_moe, E) expert loads over the step
        stats: dict[str, torch.Tensor] = {}
        for k in range(accum):
            x, y, starts = next(micro)
            x, y = x.to(rt.device), y.to(rt.device)  # (B, T) each
            kw = {"doc_starts": starts.to(rt.device)} if starts is not None else {}
            seed_micro_batch(self.seed, micro_seen + k * W + rt.rank)
            with distributed.gradient_sync(self.wrapped, enabled=k == accum - 1):
                with rt.autocast():
                    loss, stats = self.wrapped(x, y, **kw)
                scaled = loss / accum if not self.masked else loss * weights[k]
                self.scaler.scale(scaled).backward()
            if self.masked:
                sums += torch.stack([loss.detach(), stats["ce"]]) * weights[k] / W
            else:
                sums += torch.stack([loss.detach(), stats["ce"]])
            if "moe_layer_loads" in stats:
                layer_loads = stats["moe_layer_loads"].float()
                loads = layer_loads if loads is None else loads + layer_loads
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16 loss scaling
        clip = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm_t = torch.nn.utils.clip_grad_norm_(self._trained(), clip)
        if self.masked:  # sums are already this rank's share of the global mean
            means = distributed.sum_across_ranks(sums, rt)
        else:
            means = distributed.mean_across_ranks(sums / accum, rt)
        step_loss, ce = means.tolist()  # one sync; the same on every rank
        grad_norm = distributed.local_value(grad_norm_t).item()
        result = StepResult(step_loss, ce, grad_norm, False, False, [], stats, n_targets)
        self._update_or_skip(result, step)
        if loads is not None and not result.skipped and hasattr(self.model, "balance_experts"):
            # sign(mean - load) does not care about scale: the mean over ranks will do
            self.model.balance_experts(distributed.mean_across_ranks(loads, rt))
        self.optimizer.zero_grad(set_to_none=True)
        return result

    def _trained(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (all, or LoRA's adapters only)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def _skip_empty(self) -> StepResult:
        """A masked step whose global batch holds no supervised target: nothing to learn."""
        self.empty_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        warning = f"skipped: no supervised target in the batch ({self.empty_steps} so far)"
        return StepResult(math.nan, math.nan, 0.0, True, False, [warning], {}, 0, True)

    def _update_or_skip(self, r: StepResult, step: int) -> None:
        health, scaler = self.health, self.scaler
        finite = health.is_finite(r.loss, r.grad_norm)
        if finite:
            scaler.step(self.optimizer)  # the first step allocates the optimizer state
            scaler.update()
            r.warnings += health.record_good(r.loss, r.grad_norm)
            return
        r.skipped = True
        if scaler.is_enabled() and math.isfinite(r.loss):
            scaler.step(self.optimizer)  # finds the inf gradient and skips the update
            scaler.update()  # lowers the scale
            r.overflow = True
            health.record_overflow()
            return
        scaler.update()
        r.warnings.append(
            f"skipped: loss {r.loss}, gradient norm {r.grad_norm} "
            f"({health.bad_in_a_row + 1} in a row)"
        )
        if health.record_bad():
            raise GptlabError(
                f"training diverged: {health.bad_in_a_row} steps in a row had a non-finite loss "
                f"or gradient (last at step {step}); lower --optim.lr, raise --optim.warmup_steps "
                "or use --train.dtype bfloat16 instead of float16, then resume from the last "
                "checkpoint"
            )


def batch_stream(next_batch: Callable[[], Batch]) -> Iterator[Batch]:
    """An endless iterator over a loader's `next_batch`."""
    while True:
        yield next_batch()


def extra_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """The last micro-batch's MoE and MTP statistics as plain numbers (for metrics.jsonl)."""
    out: dict[str, Any] = {}
    for name, value in stats.items():
        if name in ("ce", "moe_layer_loads"):
            continue
        if name == "moe_tokens_per_expert":
            load = value.float()
            out["moe_load"] = [round(v, 4) for v in (load / load.sum()).tolist()]
        else:
            out[name] = value.item()
    return out
