"""Muon for hidden matrices and AdamW for the rest, as one torch optimizer.

Muon (Jordan et al. 2024): keep a momentum buffer of the gradient, orthogonalise it (every
singular value -> 1, optim/orthogonalize.py) and step along that. The update is steepest descent
under the spectral norm, so every direction in the matrix moves by the same amount however
skewed the gradient's spectrum is.

Key decision, the update scale: an orthogonalised m x n matrix has RMS 1 / sqrt(max(m, n)), so we
multiply by 0.2 sqrt(max(m, n)) to give it RMS 0.2, about that of an AdamW update (Liu et al.
2025, "Muon is scalable for LLM training"). Then `muon_lr` and `weight_decay` sit on AdamW's
scale, and the scale is symmetric in m and n, so it needs no knowledge of whether a weight is
stored (out, in) like nn.Linear or (in, out) like the stacked MoE experts.

The math lives in small pure functions; `MuonAdamW.step` only loops over groups and dispatches on
`group["kind"]` ("muon" or "adamw"). Decoupled weight decay is p <- p - lr * (u + wd * p) with u
the update direction; the cautious variant (Chen et al. 2025) masks the decay term to coordinates
where u and p share a sign. GradScaler works with it as with any optimizer: it unscales the
gradients in `param_groups` and skips `step()` on inf/nan.

Under FSDP a weight, its gradient and its momentum are DTensor shards. The momentum update is
elementwise, so it runs on the shard; orthogonalisation needs the whole matrix, so the
direction is all-gathered, orthogonalised (the same on every rank) and each rank keeps its
own rows of the result.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from gptlab.optim.orthogonalize import orthogonalize


def is_dtensor(t: object) -> bool:
    """Whether `t` is an FSDP shard. torch.distributed.tensor takes 0.5 s to import and only
    FSDP runs load it: until then no tensor can be one."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


UPDATE_RMS = 0.2  # target RMS of a Muon update: that of a typical AdamW update


def muon_scale(shape: torch.Size) -> float:
    """Factor that gives an orthogonalised (..., m, n) update RMS `UPDATE_RMS`."""
    return UPDATE_RMS * math.sqrt(max(shape[-2], shape[-1]))


def momentum_direction(
    grad: torch.Tensor, buf: torch.Tensor, momentum: float, nesterov: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new buffer, direction to orthogonalise): buf <- mu buf + (1 - mu) g; Nesterov looks ahead.

    The (1 - mu) damping only rescales the buffer, which orthogonalisation ignores anyway.
    """
    new_buf = momentum * buf + (1 - momentum) * grad
    direction = (1 - momentum) * grad + momentum * new_buf if nesterov else new_buf
    return new_buf, direction


def foreach_momentum(
    grads: list[torch.Tensor], bufs: list[torch.Tensor], momentum: float, nesterov: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`momentum_direction` for many matrices at once: (new buffers, directions), in a few
    fused multi-tensor kernels instead of four small ops per matrix. Out of place, like
    `momentum_direction` (a loaded optimizer state may share its tensors with another)."""
    if not grads:
        return [], []
    new_bufs = torch._foreach_lerp(bufs, grads, 1 - momentum)  # mu buf + (1 - mu) g
    if not nesterov:
        return new_bufs, new_bufs
    return new_bufs, torch._foreach_lerp(grads, new_bufs, momentum)  # (1 - mu) g + mu buf


def muon_update(
    grad: torch.Tensor,
    buf: torch.Tensor,
    *,
    momentum: float,
    nesterov: bool,
    method: str,
    steps: int,
    dtype: torch.dtype | None = None,
    orthogonalize_fn: Callable[..., torch.Tensor] = orthogonalize,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new momentum buffer, Muon update direction of RMS ~0.2) for one matrix or expert stack
    (either a plain tensor or an FSDP DTensor shard)."""
    new_buf, direction = momentum_direction(grad, buf, momentum, nesterov)
    if is_dtensor(direction):  # gather the whole matrix, keep this rank's shard
        from torch.distributed.tensor import distribute_tensor

        full = orthogonalize_fn(direction.full_tensor(), method, steps, dtype)
        ortho = distribute_tensor(
            full, direction.device_mesh, direction.placements, src_data_rank=None
        )
    else:
        ortho = orthogonalize_fn(direction, method, steps, dtype)
    return new_buf, ortho.to(grad.dtype) * muon_scale(grad.shape)


def adamw_update(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new exp_avg, new exp_avg_sq, update direction) of Adam at 1-based `step`, bias-corrected."""
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    direction = (exp_avg / bias1) / ((exp_avg_sq / bias2).sqrt() + eps)
    return exp_avg, exp_avg_sq, direction


def decay_term(
    param: torch.Tensor, direction: torch.Tensor, weight_decay: float, cautious: bool
) -> torch.Tensor:
    """wd * p, kept only where sign(direction) == sign(p) when `cautious`."""
    decay = weight_decay * param
    if cautious:
        decay = decay * (direction * param > 0)
    return decay


def foreach_adamw(
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[int],
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """`adamw_update` for many tensors in a few multi-tensor kernels, out of place like it:
    (new exp_avgs, new exp_avg_sqs, directions); steps are each tensor's own (1-based)."""
    exp_avgs = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)  # b1 m + (1 - b1) g
    exp_avg_sqs = torch._foreach_mul(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)  # b2 v + (1 - b2) g^2
    denom = torch._foreach_sqrt(torch._foreach_div(exp_avg_sqs, [1 - beta2**t for t in steps]))
    torch._foreach_add_(denom, eps)
    directions = torch._foreach_div(exp_avgs, [1 - beta1**t for t in steps])
    torch._foreach_div_(directions, denom)
    return exp_avgs, exp_avg_sqs, directions


def apply_updates(
    params: list[torch.Tensor],
    directions: list[torch.Tensor],
    lr: float,
    scale: float,
    weight_decay: float,
    cautious: bool,
) -> None:
    """p <- p - lr * (scale * d + decay_term(p, d)) for every pair, in place, as multi-tensor
    kernels (a direction may be bf16: it is added to its fp32 weight in fp32)."""
    if weight_decay and cautious:  # the mask needs p before the update
        decays = [
            decay_term(p, d, weight_decay, True) for p, d in zip(params, directions, strict=True)
        ]
        torch._foreach_add_(params, decays, alpha=-lr)
    elif weight_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)  # p - lr wd p
    torch._foreach_add_(params, directions, alpha=-lr * scale)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over groups of kind "muon" and "adamw" (see optim/groups.py).

    Group keys: lr, weight_decay, kind; muon groups also momentum, nesterov, orthogonalizer,
    ns_steps; adamw groups betas, eps; both cautious_wd. `apply_schedule` rewrites lr,
    weight_decay and momentum every step. State: a momentum buffer per Muon tensor; step,
    exp_avg and exp_avg_sq per AdamW tensor.
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        defaults: dict[str, Any],
        compile_orthogonalize: bool = False,
        orthogonalize_dtype: torch.dtype | None = None,
    ) -> None:
        for group in param_groups:
            if group.get("kind") not in ("muon", "adamw"):
                raise ValueError(f"group {group.get('name')!r} needs kind 'muon' or 'adamw'")
        super().__init__(param_groups, defaults)
        # bf16 Gram products on accelerators and on CPUs with fast bf16 (the iteration tolerates
        # them: Muon's reference implementation runs in bf16); otherwise the gradient's dtype
        self.orthogonalize_dtype = orthogonalize_dtype
        # torch.compile fuses the Newton-Schulz / Polar Express iteration (one graph per
        # matrix shape; method, steps and dtype are fixed per group, so nothing recompiles)
        self.orthogonalize_fn = (
            torch.compile(orthogonalize) if compile_orthogonalize else orthogonalize
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["kind"] == "muon":
                updates = self._muon_updates(params, group)
            else:
                updates = [(params, self._adamw_directions(params, group), 1.0)]
            for ps, directions, scale in updates:
                wd, cautious = group["weight_decay"], group["cautious_wd"]
                apply_updates(ps, directions, group["lr"], scale, wd, cautious)
        return loss

    def _muon_updates(
        self, params: list[torch.Tensor], group: dict[str, Any]
    ) -> list[tuple[list[torch.Tensor], list[torch.Tensor], float]]:
        """(weights, their orthogonalised directions, scale) batches of a Muon group.

        Matrices of one shape are orthogonalised together, as one batched call (the speedrun
        records' trick: a few large matmuls instead of many small ones). For the 2 x 256 CPU
        recipe in bf16 (8 matrices, 4 shapes) the optimizer step went from 22 to about 10 ms,
        together with fused scale-adds in the iteration and multi-tensor momentum, Adam and
        update kernels. Batching a tall matrix with the transposes of its wide siblings was no
        faster (its strided copies cost what the saved call did). FSDP shards go one by one
        (each is gathered whole).
        """
        dtype = self.orthogonalize_dtype or (
            torch.bfloat16 if params[0].device.type == "cuda" else None
        )
        updates: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
        plain = []
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            if is_dtensor(p.grad):
                updates.append(([p], [self._muon_direction(p, group)], 1.0))
            else:
                plain.append(p)
        bufs = [self.state[p]["momentum_buffer"] for p in plain]
        bufs, directions = foreach_momentum(
            [p.grad for p in plain], bufs, group["momentum"], group["nesterov"]
        )
        batches: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p, buf, direction in zip(plain, bufs, directions, strict=True):
            self.state[p]["momentum_buffer"] = buf
            batches.setdefault((tuple(p.shape), p.device), []).append((p, direction))
        method, steps = group["orthogonalizer"], group["ns_steps"]
        for (shape, device), items in batches.items():
            # stack and cast to the iteration's dtype in one copy per matrix
            iter_dtype = dtype or items[0][1].dtype
            stacked = torch.empty((len(items), *shape), dtype=iter_dtype, device=device)
            for row, (_, direction) in zip(stacked, items, strict=True):
                row.copy_(direction)
            ortho = self.orthogonalize_fn(stacked, method, steps, dtype)  # (k, *shape)
            ps = [p for p, _ in items]
            updates.append((ps, list(ortho.unbind(0)), muon_scale(torch.Size(shape))))
        return updates

    def _muon_direction(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        dtype = self.orthogonalize_dtype or (torch.bfloat16 if p.device.type == "cuda" else None)
        state["momentum_buffer"], direction = muon_update(
            p.grad,
            state["momentum_buffer"],
            momentum=group["momentum"],
            nesterov=group["nesterov"],
            method=group["orthogonalizer"],
            steps=group["ns_steps"],
            dtype=dtype,
            orthogonalize_fn=self.orthogonalize_fn,
        )
        return direction

    def _adamw_directions(
        self, params: list[torch.Tensor], group: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Adam directions of an AdamW group's tensors; their moments are updated in state."""
        states = [self.state[p] for p in params]
        for state, p in zip(states, params, strict=True):
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
        beta1, beta2 = group["betas"]
        exp_avgs, exp_avg_sqs, directions = foreach_adamw(
            [p.grad for p in params],
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            [st["step"] for st in states],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
        )
        for state, m, v in zip(states, exp_avgs, exp_avg_sqs, strict=True):
            state["exp_avg"], state["exp_avg_sq"] = m, v
        return directions
