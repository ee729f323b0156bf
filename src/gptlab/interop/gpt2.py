"""GPT2LMHeadModel <-> gptlab: the config map and the weight-name table.

GPT-2 is gptlab's default architecture, so the map is one to one, with two twists. HF's GPT-2
uses `Conv1D` layers, which store weights as (in, out) and compute x @ W + b; our nn.Linear
stores (out, in), so every attention and MLP matrix is transposed. And HF checkpoints come in
two key layouts: `transformer.h.0...` (saved from GPT2LMHeadModel) and `h.0...` (from the bare
GPT2Model, e.g. the original `gpt2` upload); both are read, the first is written.

The original GPT-2 uses the tanh approximation of GELU ("gelu_new"); such a model imports with
model.mlp gelu_tanh, which computes exactly that. gptlab's default, model.mlp gelu, is the exact
erf GELU, exported as activation_function "gelu"; gelu_tanh exports as "gelu_new".
"""

from __future__ import annotations

from typing import Any

from gptlab.errors import ConfigError
from gptlab.interop.convert import Rule
from gptlab.model.config import ModelConfig

ARCHITECTURE = "GPT2LMHeadModel"
MODEL_TYPES = ("gpt2",)
PREFIX = "transformer."
EXACT_GELU = ("gelu", "gelu_python")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: Any, where: str) -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig for an HF GPT2Config, and notes on anything approximated."""
    notes = []
    act = hf.activation_function
    if act not in EXACT_GELU + TANH_GELU:
        raise ConfigError(
            f"{where}: activation_function {act!r} has no gptlab equivalent (gelu, gelu_new)"
        )
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False) or not hf.scale_attn_weights:
        raise ConfigError(
            f"{where}: scale_attn_by_inverse_layer_idx / scale_attn_weights off change the "
            "attention scale, which gptlab fixes at 1/sqrt(D); not supported"
        )
    try:
        cfg = ModelConfig(
            n_layer=hf.n_layer,
            n_head=hf.n_head,
            n_embd=hf.n_embd,
            seq_len=hf.n_positions,
            vocab_size=hf.vocab_size,
            d_ff=hf.n_inner,
            norm_eps=hf.layer_norm_epsilon,
            tie_embeddings=bool(hf.tie_word_embeddings),
            mlp="gelu_tanh" if act in TANH_GELU else "gelu",
            bias=True,
            dropout=0.0,
        )
    except ValueError as e:
        raise ConfigError(f"{where}: the config does not make a gptlab model ({e})") from None
    return cfg, notes


def _linear(ours: str, theirs: str, out_f: int, in_f: int, bias: bool) -> list[Rule]:
    """A Conv1D (in, out) weight plus bias; our side lacks the bias when cfg.bias is off."""
    rules = [Rule(ours + ".weight", (theirs + ".weight",), (out_f, in_f), transpose=True)]
    rules.append(Rule(ours + ".bias" if bias else "", (theirs + ".bias",), (out_f,)))
    return rules


def _norm(ours: str, theirs: str, cfg: ModelConfig) -> list[Rule]:
    C = cfg.n_embd
    weight = ours + ".weight" if cfg.norm_weight else ""
    bias = ours + ".bias" if cfg.norm_weight and cfg.bias else ""
    return [
        Rule(weight, (theirs + ".weight",), (C,), fill=1.0),
        Rule(bias, (theirs + ".bias",), (C,)),
    ]


def rules(cfg: ModelConfig, prefix: str = PREFIX) -> list[Rule]:
    """The whole table for `cfg`; `prefix` is the key layout ("transformer." or "")."""
    C, F, V = cfg.n_embd, cfg.ff_width, cfg.vocab_size
    p = prefix
    table = [
        Rule("wte.weight", (p + "wte.weight",), (V, C), vocab=True),
        Rule("wpe.weight", (p + "wpe.weight",), (cfg.seq_len, C)),
    ]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"{p}h.{i}."
        table += _norm(ours + "ln_1", theirs + "ln_1", cfg)
        table += _linear(ours + "attn.qkv", theirs + "attn.c_attn", 3 * C, C, cfg.bias)
        table += _linear(ours + "attn.proj", theirs + "attn.c_proj", C, C, cfg.bias)
        table += _norm(ours + "ln_2", theirs + "ln_2", cfg)
        table += _linear(ours + "mlp.fc", theirs + "mlp.c_fc", F, C, cfg.bias)
        table += _linear(ours + "mlp.proj", theirs + "mlp.c_proj", C, F, cfg.bias)
    table += _norm("ln_f", p + "ln_f", cfg)
    if not cfg.tie_embeddings:
        table.append(Rule("lm_head.weight", ("lm_head.weight",), (V, C), vocab=True))
    return table


def key_prefix(names: set[str]) -> str:
    """The layout of a checkpoint's keys: "transformer." or "" (a bare GPT2Model)."""
    return PREFIX if any(n.startswith(PREFIX) for n in names) else ""


def ignored(name: str, cfg: ModelConfig) -> bool:
    """HF keys that carry no weights of ours: the causal-mask buffers old checkpoints saved, and
    a tied head saved next to the embedding."""
    if name.endswith((".attn.bias", ".attn.masked_bias")):
        return True
    return cfg.tie_embeddings and name == "lm_head.weight"


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """GPT2Config fields for an export of `cfg` (which `exportable` accepted)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.seq_len,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.ff_width,
        "activation_function": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


def refusal(cfg: ModelConfig) -> str | None:
    """Why `cfg` has no exact GPT2LMHeadModel equivalent, or None if it has one."""
    if cfg.norm != "layernorm":
        return f"model.norm {cfg.norm} (GPT-2 uses LayerNorm)"
    if cfg.mlp not in ("gelu", "gelu_tanh"):
        return f"model.mlp {cfg.mlp} with learned positions (GPT-2 has a GELU MLP)"
    if cfg.kv_heads != cfg.n_head:
        return "grouped-query attention (model.n_kv_head) with learned positions"
    if cfg.qk_norm:
        return "model.qk_norm with learned positions"
    if cfg.window is not None:
        return "sliding-window attention (model.window) with learned positions"
    return None
