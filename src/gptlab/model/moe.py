"""Mixture of experts: a router sends each token to its top-k of n_experts MLPs.

    p      = softmax(x W_router)                       router probabilities (N, E)
    e_1..k = top-k of p (+ a balancing bias, if on)    the chosen experts
    y      = sum_i w_i * expert_{e_i}(x) + shared(x)   w = p at the chosen experts, renormalised

Dispatch is vectorised: the (token, expert) assignments are sorted by expert, each gets a slot
in its expert's buffer of `capacity` rows (first choices before second choices, earlier tokens
first), assignments past the capacity are dropped, and all experts run as one batched matmul
over an (E, capacity, C) tensor. No Python loop touches tokens or experts.

Balancing: the Switch auxiliary loss E * sum_e f_e * P_e (f = fraction of assignments to e,
P = mean router probability of e; 1 when balanced, E when collapsed), the router z-loss
mean(logsumexp(logits)^2), and DeepSeek-V3's loss-free alternative: a per-expert bias added to
the scores only for choosing, nudged toward the less-used experts after each optimizer step
(`balance`, from the load of the whole step; see train/step.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.config import ModelConfig
from gptlab.model.layers import make_mlp


@dataclasses.dataclass
class Routing:
    """One forward's assignments, sorted by expert. A = N * top_k assignments."""

    expert: torch.Tensor  # (A,) expert of each assignment
    token: torch.Tensor  # (A,) token (row of the flattened input) it comes from
    weight: torch.Tensor  # (A,) its mixing weight
    slot: torch.Tensor  # (A,) row in that expert's buffer
    keep: torch.Tensor  # (A,) bool, False when the expert was full (dropped)
    counts: torch.Tensor  # (E,) assignments per expert, before dropping
    capacity: int
    logits: torch.Tensor  # (N, E) router logits, fp32
    probs: torch.Tensor  # (N, E) router probabilities, fp32


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.moe
        self.cfg, self.n_experts, self.top_k = cfg, m.n_experts, m.top_k
        d, C, E = cfg.expert_width, cfg.n_embd, m.n_experts
        self.gated = cfg.mlp == "swiglu"
        n_in = 2 * d if self.gated else d
        self.router = nn.Linear(C, E, bias=False)
        self.w_in = nn.Parameter(torch.empty(E, C, n_in))  # every expert's fc, stacked
        self.w_out = nn.Parameter(torch.empty(E, d, C))  # every expert's proj, stacked
        if cfg.bias:
            self.b_in = nn.Parameter(torch.zeros(E, n_in))
            self.b_out = nn.Parameter(torch.zeros(E, C))
        self.shared = make_mlp(cfg, m.n_shared_experts * d) if m.n_shared_experts else None
        if m.bias_balancing:
            self.register_buffer("expert_bias", torch.zeros(E))

    def route(self, x: torch.Tensor) -> Routing:
        """Choose experts for the tokens x (N, C) and give every assignment a buffer slot."""
        N, E, k = x.size(0), self.n_experts, self.top_k
        logits = self.router(x).float()  # (N, E)
        probs = logits.softmax(dim=-1)
        scores = probs + self.expert_bias if hasattr(self, "expert_bias") else probs
        chosen = scores.topk(k, dim=-1).indices  # (N, k)
        weight = probs.gather(-1, chosen)  # (N, k)
        if k > 1:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        # k-major order (all first choices, then all second choices ...), so a stable sort by
        # expert gives first choices the earlier slots when capacity is short
        expert = chosen.t().reshape(-1)  # (k*N,)
        token = torch.arange(N, device=x.device).repeat(k)  # (k*N,)
        weight = weight.t().reshape(-1)
        order = torch.sort(expert, stable=True).indices
        expert, token, weight = expert[order], token[order], weight[order]
        counts = torch.bincount(expert, minlength=E)  # (E,)
        first = torch.cumsum(counts, 0) - counts  # index of each expert's first assignment
        slot = torch.arange(expert.numel(), device=x.device) - first[expert]
        cf = self.cfg.moe.capacity_factor
        # the capacity limit is a training device: evaluation and generation drop no tokens,
        # so a token's output never depends on which other tokens share its batch
        limited = cf is not None and self.training
        capacity = math.ceil(cf * N * k / E) if limited else int(counts.max())
        keep = slot < capacity
        return Routing(expert, token, weight, slot, keep, counts, capacity, logits, probs)

    def experts(self, buf: torch.Tensor) -> torch.Tensor:
        """Run all experts at once: (E, capacity, C) -> (E, capacity, C)."""
        h = torch.bmm(buf, self.w_in)  # (E, cap, C) @ (E, C, n_in) -> (E, cap, n_in)
        if hasattr(self, "b_in"):
            h = h + self.b_in[:, None]
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.cfg.mlp == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh" if self.cfg.mlp == "gelu_tanh" else "none")
        out = torch.bmm(h, self.w_out)  # (E, cap, d) @ (E, d, C) -> (E, cap, C)
        return out + self.b_out[:, None] if hasattr(self, "b_out") else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, T, C) -> output (B, T, C) and this layer's routing statistics and losses."""
        B, T, C = x.shape
        xf = x.reshape(B * T, C)  # (N, C)
        r = self.route(xf)
        e, s, t = r.expert[r.keep], r.slot[r.keep], r.token[r.keep]
        buf = xf.new_zeros(self.n_experts, r.capacity, C)  # (E, cap, C)
        buf[e, s] = xf[t]  # gather each kept assignment's token into its slot
        out = self.experts(buf)  # (E, cap, C)
        contrib = (out[e, s] * r.weight[r.keep, None]).to(xf.dtype)  # (kept, C)
        y = xf.new_zeros(B * T, C).index_add_(0, t, contrib)  # sum each token's experts
        if self.shared is not None:
            y = y + self.shared(xf)

        N, E = B * T, self.n_experts
        frac = r.counts.float() / (N * self.top_k)  # f_e: share of assignments
        stats = {
            "aux_loss": E * (frac * r.probs.mean(dim=0)).sum(),
            "z_loss": torch.logsumexp(r.logits, dim=-1).square().mean(),
            "dropped": (~r.keep).sum(),
            "assignments": torch.tensor(r.keep.numel(), device=x.device),
            "tokens_per_expert": r.counts,
        }
        return y.view(B, T, C), stats

    @torch.no_grad()
    def balance(self, load: torch.Tensor) -> None:
        """Loss-free balancing: raise the bias of the experts that got fewer assignments than
        the mean in `load` (E,), lower the others'. Called by the trainer once per optimizer
        step with the load of the whole global batch, never in the forward: a forward recomputed
        by activation checkpointing must route exactly as the first pass did."""
        if hasattr(self, "expert_bias"):
            step = self.cfg.moe.bias_update_rate * torch.sign(load.mean() - load)
            self.expert_bias += step.to(self.expert_bias.dtype)
