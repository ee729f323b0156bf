"""GPT: one decoder-only transformer class; the config picks each piece.

Default design (GPT-2): token + learned position embeddings, pre-norm residual blocks
(x + attn(norm(x)), x + mlp(norm(x))), a final norm, and an output head tied to the token
embedding. Init follows GPT-2: N(0, 0.02) everywhere, with residual output projections scaled
by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.

Modern variants (RoPE, ALiBi, RMSNorm, QK-norm, SwiGLU, ReLU^2, GQA, sliding windows, softcaps,
MoE, multi-token prediction, document masking) are ModelConfig fields; see docs/architecture.md.

    model(idx)                 -> logits (B, T, V), fp32
    model(idx, targets)        -> (loss, stats): loss is the training objective (cross-entropy
                                  plus MTP and MoE terms); stats holds detached scalars,
                                  stats["ce"] being the plain next-token cross-entropy
    model(idx, targets, doc_starts=starts)   the same with document masking (starts: (B, T) bool)
    model.forward_cached(idx, step)   inference with a KV cache: logits (B, V) of the last
                                      new token of each row (model/kv_cache.py)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model.attention import AttnContext, CausalSelfAttention
from gptlab.model.config import ModelConfig
from gptlab.model.kv_cache import CacheStep
from gptlab.model.layers import (
    Rotary,
    alibi_slopes,
    make_dropout,
    make_mlp,
    make_norm,
    rotary_tables,
)
from gptlab.model.moe import MoE

Stats = dict[str, torch.Tensor]
IGNORE = -1  # a target the loss skips (chat finetuning masks everything but the replies)

# parameters that write into the residual stream: scaled (or zeroed) at init
RESIDUAL_OUTPUTS = ("attn.proj.weight", "mlp.proj.weight", "mlp.w_out", "shared.proj.weight")


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (N, V) over the targets (N,) that are not IGNORE (-1):
    chat finetuning sets the targets it does not train on (prompts, padding) to -1. With no
    target left the loss is 0 with zero gradients, never NaN (the training step skips such
    batches; train/step.py)."""
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    return total / (targets != IGNORE).sum().clamp(min=1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, moe: bool = False) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = MoE(cfg) if moe else make_mlp(cfg)
        self.drop = make_dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> tuple[torch.Tensor, Stats | None]:
        x = x + self.drop(self.attn(self.ln_1(x), ctx))  # (B, T, C)
        h, stats = self.mlp(self.ln_2(x)), None
        if isinstance(h, tuple):  # an MoE layer also returns its routing statistics
            h, stats = h
        return x + self.drop(h), stats  # (B, T, C)


class MTPHead(nn.Module):
    """Multi-token prediction (Gloeckle et al. 2024): one extra block on the trunk's output,
    then a norm; the shared output head turns it into logits for a token further ahead."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.block = Block(cfg, cfg.n_layer - 1)
        self.ln = make_norm(cfg)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        return self.ln(self.block(x, ctx)[0])


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, V = cfg.n_embd, cfg.padded_vocab
        device = torch.get_default_device()  # cpu; meta when the caller shards before init
        with torch.device("meta"):  # no throw-away default inits: init_weights sets every value
            # an embedding given its (empty) weight skips its default init: a normal_ on the
            # meta device would import torch's reference kernels, 0.6 s of every start
            self.wte = nn.Embedding(V, C, _weight=torch.empty(V, C))
            if cfg.pos_emb == "learned":
                self.wpe = nn.Embedding(cfg.seq_len, C, _weight=torch.empty(cfg.seq_len, C))
            if cfg.pos_emb == "rope":
                self.rotary = Rotary(cfg)
            self.drop = make_dropout(cfg.dropout)
            self.blocks = nn.ModuleList(
                Block(cfg, i, moe=cfg.is_moe_layer(i)) for i in range(cfg.n_layer)
            )
            self.ln_f = make_norm(cfg)
            self.lm_head = nn.Linear(C, V, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.wte.weight  # one (V, C) matrix both ways
            self.mtp = nn.ModuleList(MTPHead(cfg) for _ in range(cfg.mtp_heads))
        self.to_empty(device=device)
        # on the meta device (shapes only, e.g. parameter counts) there is nothing to fill, and
        # normal_ there would load torch's reference kernels: 0.5 s of every `gptlab train`
        if torch.device(device).type != "meta":
            self.init_weights()

    def to_empty(self, *, device: torch.device | str | None, recurse: bool = True) -> GPT:
        """nn.Module.to_empty, keeping the head tied: to_empty gives every module a new
        parameter tensor, which would untie lm_head from wte. Plain tensors are replaced by
        torch.empty of their shape: nn.Module.to_empty's empty_like on meta tensors loads
        torch's symbolic-shape machinery (sympy), 0.3 s of every start. Sharded (FSDP) ones go
        through nn.Module.to_empty."""
        tensors = [*self.parameters(), *self.buffers()]
        if not recurse or any(type(t) not in (torch.Tensor, nn.Parameter) for t in tensors):
            super().to_empty(device=device, recurse=recurse)
        else:
            for module in self.modules():
                for key, p in module._parameters.items():
                    if p is not None:
                        fresh = torch.empty(p.shape, dtype=p.dtype, device=device)
                        module._parameters[key] = nn.Parameter(fresh, p.requires_grad)
                for key, b in module._buffers.items():
                    if b is not None:
                        module._buffers[key] = torch.empty(b.shape, dtype=b.dtype, device=device)
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        return self

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Set every parameter (`init_parameter`, drawn in `named_parameters` order from
        `generator` or torch's global one) and every buffer (`init_buffers`)."""
        for name, p in self.named_parameters():
            self.init_parameter(name, p, generator)
        self.init_buffers()

    @torch.no_grad()
    def init_parameter(
        self, name: str, tensor: torch.Tensor, generator: torch.Generator | None = None
    ) -> None:
        """Fill `tensor`, of parameter `name`'s shape, with its GPT-2 init: N(0, 0.02); residual
        outputs N(0, 0.02 / sqrt(2 L)) or zero (zero_init_proj); biases 0; norm weights 1."""
        owner = self.get_submodule(name.rpartition(".")[0])
        if name.endswith(".bias") or name.rsplit(".", 1)[-1] in ("b_in", "b_out"):
            nn.init.zeros_(tensor)
        elif isinstance(owner, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(tensor)
        elif name.endswith(RESIDUAL_OUTPUTS):
            if self.cfg.zero_init_proj:
                nn.init.zeros_(tensor)
            else:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
                nn.init.normal_(tensor, mean=0.0, std=std, generator=generator)
        else:  # embeddings, qkv, MLP inputs, routers, an untied lm_head
            nn.init.normal_(tensor, mean=0.0, std=0.02, generator=generator)

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Set every buffer: the rotary tables and ALiBi slopes (derived from the config) and
        the MoE balancing biases (zero). Needed after `to_empty`, which leaves them garbage."""
        derived: dict[str, torch.Tensor] = {}
        if self.cfg.pos_emb == "rope":
            derived["cos"], derived["sin"] = rotary_tables(self.cfg)  # (T, D/2) each
        if self.cfg.pos_emb == "alibi":
            derived["alibi"] = alibi_slopes(self.cfg.n_head)  # (H,)
        for name, buf in self.named_buffers():
            kind = name.rsplit(".", 1)[-1]
            if kind == "expert_bias":  # loss-free balancing starts with no bias
                buf.zero_()
            else:
                buf.copy_(derived[kind])  # a KeyError here: a new buffer needs its init above

    def attention_kernels(self, device: torch.device, dtype: torch.dtype, T: int) -> list[str]:
        """The attention kernel each block runs in a training forward of T tokens computing in
        `dtype` on `device` (`CausalSelfAttention.kernel`), e.g. for the memory plan."""
        cfg = self.cfg
        return [b.attn.kernel(device, dtype, T, cfg.doc_mask, cfg.dropout) for b in self.blocks]

    def _positions(self, T: int, doc_starts: torch.Tensor | None, device) -> torch.Tensor:
        """Position of each token: 0..T-1, or (B, T) restarting at every document start."""
        pos = torch.arange(T, device=device)  # (T,)
        if doc_starts is None:
            return pos
        start = torch.where(doc_starts, pos, torch.zeros_like(pos))  # (B, T)
        return pos - start.cummax(dim=1).values  # distance to the latest document start

    def _embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) at positions (T,) or (B, T) -> input vectors (B, T, C)."""
        x = self.wte(idx)  # (B, T, C)
        if self.cfg.embed_scale:
            x = x * math.sqrt(self.cfg.n_embd)
        if self.cfg.pos_emb == "learned":
            x = x + self.wpe(pos)  # (T, C) or (B, T, C), broadcast over the batch
        return x

    def forward_cached(self, idx: torch.Tensor, step: CacheStep) -> torch.Tensor:
        """Inference with a KV cache: new tokens (B, T) -> fp32 logits (B, V) of each row's last
        real new token. Their keys and values go into the cache (model/kv_cache.py); the caller
        commits the step afterwards. The multi-token-prediction heads are not used."""
        B, T = idx.shape
        pos = step.positions  # (T,) or (B, T)
        x = self._embed(idx, pos)  # (B, T, C)
        ctx = AttnContext(rope=self.rotary(pos) if self.cfg.pos_emb == "rope" else None, cache=step)
        for block in self.blocks:
            x, _ = block(x, ctx)  # (B, T, C)
        if T > 1:
            last = torch.tensor(step.last_index, device=idx.device)  # (B,)
            x = x[torch.arange(B, device=idx.device), last]  # (B, C)
        else:
            x = x[:, 0]  # (B, C)
        return self.logits(self.ln_f(x))  # (B, V)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, C) -> fp32 logits (B, T, vocab_size), padding cropped."""
        logits = self.lm_head(h)[..., : self.cfg.vocab_size].float()  # fp32: stable softmax
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap) if cap is not None else logits

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        doc_starts: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Stats]:
        """Logits (B, T, V); or, given targets (B, T), (training loss, stats). See module doc."""
        cfg = self.cfg
        B, T = idx.shape
        if cfg.seq_len < T:
            raise ValueError(f"sequence of {T} tokens exceeds model.seq_len {cfg.seq_len}")
        if doc_starts is not None and not cfg.doc_mask:
            raise ValueError("doc_starts were given but model.doc_mask is off")
        pos = self._positions(T, doc_starts, idx.device)  # (T,) or (B, T)
        doc_ids = doc_starts.long().cumsum(dim=1) if doc_starts is not None else None  # (B, T)
        x = self.drop(self._embed(idx, pos))  # (B, T, C)
        ctx = AttnContext(rope=self.rotary(pos) if cfg.pos_emb == "rope" else None, doc_ids=doc_ids)
        moe_stats: list[Stats] = []
        for block in self.blocks:
            x, stats = block(x, ctx)  # (B, T, C)
            if stats is not None:
                moe_stats.append(stats)
        logits = self.logits(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits

        ce = masked_cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        loss, out = ce, {"ce": ce.detach()}
        for i, (head, weight) in enumerate(
            zip(self.mtp, cfg.mtp_loss_weights, strict=True), start=1
        ):
            if i >= T:  # no target that far ahead
                break
            # head i predicts token t+1+i, i.e. targets[t+i], for the positions that have one
            ahead = self.logits(head(x, ctx))[:, : T - i]  # (B, T-i, V)
            ahead_targets = targets[:, i:].reshape(-1)  # (B*(T-i),)
            ce_i = masked_cross_entropy(ahead.reshape(-1, ahead.size(-1)), ahead_targets)
            loss = loss + weight * ce_i
            out[f"mtp_ce_{i}"] = ce_i.detach()
        if moe_stats:
            aux = torch.stack([s["aux_loss"] for s in moe_stats]).sum()
            z = torch.stack([s["z_loss"] for s in moe_stats]).sum()
            loss = loss + cfg.moe.aux_loss_coef * aux + cfg.moe.z_loss_coef * z
            n = len(moe_stats)
            dropped = sum(s["dropped"] for s in moe_stats)
            total = sum(s["assignments"] for s in moe_stats)
            out |= {
                "moe_aux_loss": aux.detach() / n,
                "moe_z_loss": z.detach() / n,
                "moe_drop_frac": dropped.float() / total,
                "moe_tokens_per_expert": sum(s["tokens_per_expert"] for s in moe_stats),
                # (L_moe, E) per MoE layer, for `balance_experts` after the optimizer step
                "moe_layer_loads": torch.stack([s["tokens_per_expert"] for s in moe_stats]),
            }
        return loss, out

    def balance_experts(self, loads: torch.Tensor) -> None:
        """Loss-free MoE balancing from one optimizer step's loads (L_moe, E): row i is the
        i-th MoE layer's assignments per expert, summed over the step (`moe_layer_loads`)."""
        layers = [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]
        for moe, load in zip(layers, loads, strict=True):
            moe.balance(load)
