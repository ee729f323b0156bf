"""LlamaForCausalLM (and Mistral, Qwen2, Qwen3 where they map) <-> gptlab.

The family is RoPE + RMSNorm + SwiGLU (+ GQA), which gptlab builds from config switches:
pos_emb rope, norm rmsnorm, mlp swiglu, n_kv_head. The weight map:
  q_proj, k_proj, v_proj    -> attn.qkv   (stacked along the output dim: H*D, Hkv*D, Hkv*D rows)
  o_proj                    -> attn.proj
  gate_proj, up_proj        -> mlp.fc     (gate rows first: SwiGLUMLP chunks gate, then up)
  down_proj                 -> mlp.proj
  input_layernorm, post_attention_layernorm, norm -> ln_1, ln_2, ln_f
  q_norm, k_norm (Qwen3)    -> attn.q_norm, attn.k_norm (model.qk_norm)

RoPE layout: Meta's original checkpoints rotate interleaved channel pairs (0,1), (2,3), ...; the
HF conversion permuted the rows of q_proj and k_proj so that HF rotates half-split pairs
(i, i + D/2) (`rotate_half`). gptlab's `apply_rope` uses the half-split pairing too, so HF
weights copy without a permutation; a model in Meta's layout must go through HF's converter
first. Biases: gptlab has one `bias` switch for every linear layer. Llama's attention_bias and
mlp_bias must agree; Qwen2 (biases on q, k, v only) maps with zero biases on o_proj and the MLP,
which computes exactly the same. Rope scaling: "linear" maps (frequencies divided by the
factor); YaRN and llama3 scaling do not (HF ramps YaRN over the dimension index, gptlab over
rotations), so they are refused rather than approximated.
"""

from __future__ import annotations

from typing import Any

from gptlab.errors import ConfigError
from gptlab.interop.convert import Rule
from gptlab.model.config import ModelConfig

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
MODEL_TYPES = tuple(ARCHITECTURES)


def _rope(hf: Any, where: str) -> tuple[float, str, float]:
    """(theta, scaling kind, factor) from rope_parameters (transformers 5) or rope_scaling."""
    params = getattr(hf, "rope_parameters", None) or {}
    if not params:  # transformers 4 spelling
        params = dict(getattr(hf, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", 10000.0))
    if kind == "default":
        return theta, "none", 1.0
    if kind == "linear":
        return theta, "linear", float(params["factor"])
    raise ConfigError(
        f"{where}: rope scaling {kind!r} has no exact gptlab equivalent (gptlab maps default "
        "and linear RoPE; its YaRN ramps over rotations, not HF's dimension index)"
    )


def _window(hf: Any, model_type: str, where: str) -> int | None:
    if model_type == "mistral":
        return getattr(hf, "sliding_window", None)
    if model_type in ("qwen2", "qwen3") and getattr(hf, "use_sliding_window", False):
        raise ConfigError(
            f"{where}: {model_type} sliding windows on some layers only (max_window_layers) "
            "do not map onto gptlab's window pattern; not supported"
        )
    return None


def config_from_hf(hf: Any, where: str) -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig for an HF Llama/Mistral/Qwen2/Qwen3 config, and notes."""
    model_type = hf.model_type
    if hf.hidden_act != "silu":
        raise ConfigError(f"{where}: hidden_act {hf.hidden_act!r}; gptlab's SwiGLU uses silu")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    if head_dim * hf.num_attention_heads != hf.hidden_size:
        raise ConfigError(
            f"{where}: head_dim {head_dim} x {hf.num_attention_heads} heads != hidden_size "
            f"{hf.hidden_size}; gptlab's heads split the model width exactly"
        )
    theta, scaling, factor = _rope(hf, where)
    if model_type == "qwen2":
        bias = True  # q, k, v biases; o_proj and the MLP get zero ones
    elif model_type == "qwen3":
        bias = bool(hf.attention_bias)
    else:
        bias = bool(getattr(hf, "attention_bias", False))
        if bias != bool(getattr(hf, "mlp_bias", False)):
            raise ConfigError(
                f"{where}: attention_bias {bias} but mlp_bias {not bias}; gptlab has one "
                "bias switch for all linear layers"
            )
    try:
        cfg = ModelConfig(
            n_layer=hf.num_hidden_layers,
            n_head=hf.num_attention_heads,
            n_kv_head=hf.num_key_value_heads or hf.num_attention_heads,
            n_embd=hf.hidden_size,
            d_ff=hf.intermediate_size,
            seq_len=hf.max_position_embeddings,
            vocab_size=hf.vocab_size,
            bias=bias,
            pos_emb="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            rope_factor=factor,
            norm="rmsnorm",
            norm_eps=hf.rms_norm_eps,
            mlp="swiglu",
            qk_norm=model_type == "qwen3",
            window=_window(hf, model_type, where),
            tie_embeddings=bool(hf.tie_word_embeddings),
            dropout=0.0,
        )
    except ValueError as e:
        raise ConfigError(f"{where}: the config does not make a gptlab model ({e})") from None
    return cfg, []


def rules(cfg: ModelConfig, model_type: str = "llama") -> list[Rule]:
    """The whole table for `cfg` in `model_type`'s layout."""
    C, F, V = cfg.n_embd, cfg.ff_width, cfg.vocab_size
    H, Hkv, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
    qkv_rows = (H * D, Hkv * D, Hkv * D)
    qwen2 = model_type == "qwen2"
    mlp_bias = cfg.bias and model_type == "llama"
    proj_bias = cfg.bias and not qwen2
    g = "weight" if cfg.norm_weight else ""

    def norm(ours: str, theirs: str, dim: int = C) -> Rule:
        return Rule(f"{ours}.weight" if g else "", (f"{theirs}.weight",), (dim,), fill=1.0)

    table = [Rule("wte.weight", ("model.embed_tokens.weight",), (V, C), vocab=True)]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        a = theirs + "self_attn."
        qkv = tuple(a + f"{n}_proj" for n in "qkv")
        table.append(norm(ours + "ln_1", theirs + "input_layernorm"))
        table.append(Rule(ours + "attn.qkv.weight", tuple(n + ".weight" for n in qkv),
                          (sum(qkv_rows), C), split=qkv_rows))  # fmt: skip
        if cfg.bias:
            table.append(Rule(ours + "attn.qkv.bias", tuple(n + ".bias" for n in qkv),
                              (sum(qkv_rows),), split=qkv_rows))  # fmt: skip
        table.append(Rule(ours + "attn.proj.weight", (a + "o_proj.weight",), (C, C)))
        if cfg.bias:
            table.append(Rule(ours + "attn.proj.bias", (a + "o_proj.bias",) * proj_bias, (C,)))
        if cfg.qk_norm:
            table.append(norm(ours + "attn.q_norm", a + "q_norm", D))
            table.append(norm(ours + "attn.k_norm", a + "k_norm", D))
        table.append(norm(ours + "ln_2", theirs + "post_attention_layernorm"))
        m = theirs + "mlp."
        table.append(Rule(ours + "mlp.fc.weight", (m + "gate_proj.weight", m + "up_proj.weight"),
                          (2 * F, C), split=(F, F)))  # fmt: skip
        if cfg.bias:
            their_fc = (m + "gate_proj.bias", m + "up_proj.bias") if mlp_bias else ()
            table.append(Rule(ours + "mlp.fc.bias", their_fc, (2 * F,), split=(F, F) * mlp_bias))
        table.append(Rule(ours + "mlp.proj.weight", (m + "down_proj.weight",), (C, F)))
        if cfg.bias:
            table.append(Rule(ours + "mlp.proj.bias", (m + "down_proj.bias",) * mlp_bias, (C,)))
    table.append(norm("ln_f", "model.norm"))
    if not cfg.tie_embeddings:
        table.append(Rule("lm_head.weight", ("lm_head.weight",), (V, C), vocab=True))
    return table


def ignored(name: str, cfg: ModelConfig) -> bool:
    """The rotary inv_freq buffers some checkpoints saved, and a tied head saved anyway."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return cfg.tie_embeddings and name == "lm_head.weight"


def export_type(cfg: ModelConfig) -> str:
    """The HF model type an export of `cfg` (which `refusal` accepted) is written as."""
    if cfg.qk_norm:
        return "qwen3"
    if cfg.window is not None:
        return "mistral"
    return "llama"


def refusal(cfg: ModelConfig) -> str | None:
    """Why `cfg` has no exact Llama-family equivalent, or None if it has one."""
    if cfg.norm != "rmsnorm":
        return f"model.norm {cfg.norm} with RoPE (Llama-family models use RMSNorm)"
    if cfg.mlp != "swiglu":
        return f"model.mlp {cfg.mlp} with RoPE (Llama-family models use SwiGLU)"
    if cfg.rope_scaling not in ("none", "linear"):
        return (
            f"model.rope_scaling {cfg.rope_scaling} (HF's YaRN ramps over the dimension index, "
            "gptlab's over rotations; only linear scaling is exact)"
        )
    if cfg.window is not None and (cfg.window_pattern or cfg.global_tokens or cfg.qk_norm):
        return (
            "a sliding-window pattern, global tokens or qk-norm with windows (Mistral slides "
            "every layer, with no global tokens)"
        )
    if cfg.window is not None and cfg.bias:
        return "model.bias with sliding windows (Mistral has no biases)"
    if cfg.qk_norm and cfg.bias:
        return "model.qk_norm with model.bias (Qwen3 has no MLP biases)"
    return None


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """The HF config fields of an export of `cfg`."""
    model_type = export_type(cfg)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "linear":
        rope = {"rope_type": "linear", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor}
    doc = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ff_width,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        "attention_bias": cfg.bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }
    if model_type == "llama":
        doc["mlp_bias"] = cfg.bias
    if model_type == "mistral":
        doc["sliding_window"] = cfg.window
    return doc
