"""One size dial -> a full RunConfig: `derive(base, AutoConfig(depth=D))`.

The rules (nanochat's, see scale/config.py for the sources), in the order they are applied:

  n_embd     = ceil(depth x aspect_ratio / head_dim) x head_dim    n_head = n_embd / head_dim
  N          = parameters under the counting convention (scale/params.py)
  tokens D   = param_data_ratio x N, or flops / (FLOPs per token)  (C = 6ND is the estimate)
  batch B    = B_ref x (D / D_ref)^0.383, a power of two in sequences
  lr         = lr_ref x (B / B_ref)^0.5 x (n_embd / n_embd_ref)^-0.5  (Muon's lr: no width term)
  wd         = wd_ref x (B / B_ref)^0.5 x D_ref / D
  max_steps  = D / B

where the reference (_ref) is the base config's architecture at auto.ref_depth, trained for its
own D_ref = param_data_ratio x N_ref tokens with the base config's batch, lr and wd. Every value
comes with a one-line reason, printed by `gptlab train --auto.depth` and `gptlab info`, and
saved next to the run's config.json as auto.json.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gptlab.config import merge, to_dict
from gptlab.errors import ConfigError
from gptlab.model.accounting import flops_per_token
from gptlab.model.config import ModelConfig
from gptlab.scale.config import AutoConfig
from gptlab.scale.params import scaling_params
from gptlab.train.config import RunConfig

AUTO_FILE = "auto.json"  # beside config.json in the run directory


@dataclasses.dataclass(frozen=True)
class Derived:
    name: str  # the dotted config field, e.g. model.n_embd, or a quantity such as tokens
    value: Any
    reason: str


@dataclasses.dataclass(frozen=True)
class Derivation:
    config: RunConfig
    auto: AutoConfig
    items: tuple[Derived, ...]
    params: int  # N under auto.params
    tokens: int  # tokens trained: max_steps x batch tokens
    flops: float  # training FLOPs by the model's FLOP count per token

    def lines(self) -> list[str]:
        """'name = value  (reason)' for every derived value."""
        width = max(len(d.name) for d in self.items)
        values = max(len(_fmt(d.value)) for d in self.items)
        return [f"{d.name:<{width}} = {_fmt(d.value):<{values}}  {d.reason}" for d in self.items]

    def to_dict(self, final: RunConfig | None = None) -> dict[str, Any]:
        """auto.json: the settings, every derived value and reason, and (given the config the
        run really trains) which derived fields a flag overrode."""
        final_dict = _flat(to_dict(final)) if final is not None else {}
        items = []
        for d in self.items:
            row = {"name": d.name, "value": d.value, "reason": d.reason}
            if d.name in final_dict and final_dict[d.name] != d.value:
                row["overridden_by"] = final_dict[d.name]
            items.append(row)
        return {
            "auto": to_dict(self.auto),
            "params": self.params,
            "params_convention": self.auto.params,
            "tokens": self.tokens,
            "flops": self.flops,
            "derived": items,
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def shape(base: ModelConfig, auto: AutoConfig, depth: int) -> tuple[ModelConfig, list[Derived]]:
    """The base architecture at `depth`: width from the aspect ratio, heads from the head dim
    (GQA keeps its group size, an explicit d_ff its ratio to the width)."""
    n_embd = math.ceil(depth * auto.aspect_ratio / auto.head_dim) * auto.head_dim
    n_head = n_embd // auto.head_dim
    vocab = auto.vocab or base.vocab_size
    items = [
        Derived("model.n_layer", depth, "the size dial (--auto.depth)"),
        Derived(
            "model.n_embd",
            n_embd,
            f"depth {depth} x aspect ratio {auto.aspect_ratio} = {depth * auto.aspect_ratio}, "
            f"rounded up to a multiple of head dim {auto.head_dim}",
        ),
        Derived("model.n_head", n_head, f"n_embd {n_embd} / head dim {auto.head_dim}"),
    ]
    fields: dict[str, Any] = {"n_layer": depth, "n_embd": n_embd, "n_head": n_head}
    if base.n_kv_head is not None:
        group = max(1, base.n_head // base.kv_heads)
        n_kv = n_head // group if n_head % group == 0 else n_head
        fields["n_kv_head"] = n_kv
        items.append(
            Derived("model.n_kv_head", n_kv, f"keeps the base's {group} heads per kv head")
        )
    if base.d_ff is not None:
        d_ff = max(32, 32 * round(base.d_ff * n_embd / base.n_embd / 32))
        fields["d_ff"] = d_ff
        items.append(
            Derived(
                "model.d_ff",
                d_ff,
                f"keeps the base's d_ff / n_embd = {base.d_ff / base.n_embd:.3g}",
            )
        )
    if vocab != base.vocab_size:
        fields["vocab_size"] = vocab
        items.append(Derived("model.vocab_size", vocab, "--auto.vocab"))
    try:
        return dataclasses.replace(base, **fields), items
    except ValueError as e:
        raise ConfigError(f"--auto.depth {depth}: {e}") from None


def batch_tokens(cfg: RunConfig) -> int:
    """Tokens per optimizer step of a config on one process."""
    t = cfg.train
    return t.global_batch_tokens or (
        (t.global_batch_size or t.batch_size * t.grad_accum_steps) * cfg.model.seq_len
    )


def derive(base: RunConfig, auto: AutoConfig) -> Derivation:
    """The full RunConfig for `auto.depth` from `base`, with the reason for every value."""
    if not auto.enabled:
        raise ConfigError("auto.depth is 0; give --auto.depth D (the number of blocks)")
    model, items = shape(base.model, auto, auto.depth)
    ref_model, _ = shape(base.model, auto, auto.ref_depth)
    n, n_ref = scaling_params(model, auto.params), scaling_params(ref_model, auto.params)
    seq_len = model.seq_len
    fpt = flops_per_token(model)
    items.append(Derived("params", n, f"{auto.params} parameters (--auto.params)"))

    d_ref = auto.param_data_ratio * n_ref  # the reference trains at the same ratio
    if auto.flops:
        tokens = auto.flops / fpt
        why = f"FLOP budget {auto.flops:.3g} / {fpt:,} FLOPs per token"
    else:
        tokens = auto.param_data_ratio * n
        why = f"{auto.param_data_ratio:g} tokens per parameter x {n:,}"
    items.append(Derived("tokens (target)", int(tokens), why))

    b_ref = auto.ref_batch_tokens or batch_tokens(base)
    b_pred = b_ref * (tokens / d_ref) ** auto.batch_exponent
    rows = b_pred / seq_len
    if auto.batch_round:
        m = auto.batch_round
        seqs, rounding = max(m, m * round(rows / m)), f"a multiple of {m}"
    else:
        seqs, rounding = 2 ** max(0, round(math.log2(max(rows, 1.0)))), "a power of two"
    b = seqs * seq_len
    items.append(
        Derived(
            "batch tokens",
            b,
            f"reference {b_ref:,} at depth {auto.ref_depth} x (tokens / {int(d_ref):,})^"
            f"{auto.batch_exponent:g} = {b_pred:,.0f}, as {rounding} of {seq_len}-token rows",
        )
    )
    # the base's micro-batch is the memory limit: the largest micro-batch up to it that divides
    # the batch (12 rows and a 512-row batch: 8)
    micro = max(d for d in range(1, min(base.train.batch_size, seqs) + 1) if seqs % d == 0)
    accum = seqs // micro
    items += [
        Derived(
            "train.batch_size",
            micro,
            f"the largest divisor of {seqs} rows up to the base's micro-batch "
            f"({base.train.batch_size})",
        ),
        Derived("train.grad_accum_steps", accum, f"{seqs} rows per step / {micro} per micro-batch"),
        Derived("train.global_batch_size", 0, "the batch is batch_size x grad_accum_steps"),
        Derived("train.global_batch_tokens", 0, "the batch is batch_size x grad_accum_steps"),
    ]

    steps = max(1, round(tokens / b))
    items.append(Derived("train.max_steps", steps, f"{int(tokens):,} tokens / {b:,} per step"))

    o = base.optim
    batch_scale = (b / b_ref) ** auto.lr_batch_exponent
    width_scale = (model.n_embd / ref_model.n_embd) ** -auto.lr_width_exponent
    lr = o.lr * batch_scale * width_scale
    why_lr = (
        f"reference {o.lr:g} x (B/B_ref)^{auto.lr_batch_exponent:g} = x{batch_scale:.3g}, "
        f"x (n_embd/{ref_model.n_embd})^-{auto.lr_width_exponent:g} = x{width_scale:.3g}"
    )
    items += [
        Derived("optim.lr", lr, why_lr),
        Derived("optim.min_lr", o.min_lr * lr / o.lr, f"keeps min_lr / lr = {o.min_lr / o.lr:.3g}"),
        Derived(
            "optim.muon_lr",
            o.muon_lr * batch_scale,
            f"reference {o.muon_lr:g} x (B/B_ref)^{auto.lr_batch_exponent:g} (Muon's updates are "
            "already width-normalised)",
        ),
    ]
    wd_scale = (b / b_ref) ** 0.5 * d_ref / tokens
    wd = o.weight_decay * wd_scale
    items.append(
        Derived(
            "optim.weight_decay",
            wd,
            f"reference {o.weight_decay:g} x sqrt(B/B_ref) x D_ref/D = x{wd_scale:.3g} "
            "(constant B / (lr wd D))",
        )
    )
    warmup = min(o.warmup_steps, max(0, steps // 5))
    if warmup != o.warmup_steps:
        items.append(
            Derived(
                "optim.warmup_steps",
                warmup,
                f"the base's {o.warmup_steps}, at most a fifth of the run",
            )
        )

    overrides = {d.name: d.value for d in items if "." in d.name and " " not in d.name}
    try:
        cfg = merge(base, _nest(overrides))
    except ConfigError as e:
        raise ConfigError(f"--auto.depth {auto.depth} derives an invalid config: {e}") from None
    trained = steps * b
    flops = float(fpt) * trained
    items.append(
        Derived(
            "flops",
            flops,
            f"{fpt:,} FLOPs per token x {trained:,} tokens (6ND = {6 * n * trained:.3g})",
        )
    )
    return Derivation(
        config=cfg, auto=auto, items=tuple(items), params=n, tokens=trained, flops=flops
    )
