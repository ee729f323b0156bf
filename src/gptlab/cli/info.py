"""`gptlab info`: the architecture, parameter counts and FLOPs of a preset, config or run.

gptlab info                          the default preset
gptlab info --preset gpt2-xl         any preset (built on the meta device: instant)
gptlab info --preset llama --model.n_layer 4     with the same overrides train accepts
gptlab info runs/shakespeare_char_cpu            a run directory (or checkpoint directory)
gptlab info hf:models/gpt2                       a Hugging Face model folder
gptlab info --auto.depth 4                       sized from one dial (docs/scaling.md)
"""

from __future__ import annotations

from pathlib import Path

from gptlab import checkpoint
from gptlab.cli.common import UsageError
from gptlab.cli.train import build_auto_config
from gptlab.config import from_dict
from gptlab.errors import GptlabError
from gptlab.infer.load import hf_folder
from gptlab.interop.hf import read_model_config
from gptlab.model.accounting import build_meta, count_params, flops_per_token
from gptlab.model.config import ModelConfig
from gptlab.presets import PRESETS
from gptlab.train.config import RunConfig

USAGE = """usage: gptlab info [RUN_DIR] [--preset NAME] [--config FILE] [--model.FIELD VALUE ...]
                   [--auto.depth D [--auto.FIELD VALUE ...]]

Print a model's architecture, parameter count (total, active, embedding) and training FLOPs
per token. RUN_DIR is a run or checkpoint directory; otherwise the model comes from the preset,
config file and flags exactly as for `gptlab train` (see gptlab train --help for every field).

presets: {presets}
"""


def _run_config(run_dir: Path) -> RunConfig:
    if hf_folder(run_dir) is not None:  # a Hugging Face model folder: its config.json only
        return RunConfig(model=read_model_config(hf_folder(run_dir)))
    if not run_dir.exists():
        raise GptlabError(f"{run_dir} does not exist; give a run directory or --preset NAME")
    for candidate in (run_dir, checkpoint.resolve(run_dir / "latest")):
        if (candidate / checkpoint.CONFIG).is_file() and (candidate / checkpoint.WEIGHTS).exists():
            try:
                return from_dict(RunConfig, checkpoint.load_config(candidate))
            except ValueError as e:
                raise GptlabError(f"{candidate} holds an invalid config ({e})") from None
    raise GptlabError(f"{run_dir} holds no checkpoint (no latest/ or config.json with weights)")


def describe(cfg: ModelConfig) -> list[str]:
    """Human-readable lines: what each architecture choice is set to."""
    d = cfg
    pos = d.pos_emb
    if d.pos_emb == "rope":
        pos += f" (theta {d.rope_theta:g}"
        pos += f", {d.rope_scaling} x{d.rope_factor:g})" if d.rope_scaling != "none" else ")"
    attn = f"{d.n_head} heads of {d.head_dim}"
    if d.kv_heads != d.n_head:
        attn += f", {d.kv_heads} kv heads ({'MQA' if d.kv_heads == 1 else 'GQA'})"
    if d.qk_norm:
        attn += ", qk-norm"
    if d.attn_softcap:
        attn += f", softcap {d.attn_softcap:g}"
    if d.window is not None:
        pattern = "".join("S" if d.layer_window(i) else "L" for i in range(d.n_layer))
        attn += f", window {d.window} ({pattern})"
        if d.global_tokens:
            attn += f" + {d.global_tokens} global tokens"
    attn += f", backend {d.attn_backend}"
    mlp = f"{d.mlp}, d_ff {d.ff_width}"
    if d.moe.enabled:
        m = d.moe
        layers = [i for i in range(d.n_layer) if d.is_moe_layer(i)]
        mlp += (
            f"; MoE in blocks {layers}: {m.n_experts} experts of {d.expert_width}, top-{m.top_k}"
            f", {m.n_shared_experts} shared, capacity "
            f"{m.capacity_factor if m.capacity_factor else 'unlimited'}"
            f"{', bias balancing' if m.bias_balancing else ''}"
        )
    norm = d.norm + ("" if d.norm_weight else " (no weight)") + f", eps {d.norm_eps:g}"
    emb = "tied" if d.tie_embeddings else "untied"
    emb += f", vocab {d.vocab_size} padded to {d.padded_vocab}"
    emb += ", scaled by sqrt(C)" if d.embed_scale else ""
    extras = []
    if d.logit_softcap:
        extras.append(f"logit softcap {d.logit_softcap:g}")
    if d.zero_init_proj:
        extras.append("zero-init output projections")
    if d.mtp_heads:
        extras.append(f"{d.mtp_heads} MTP heads, weights {list(d.mtp_loss_weights)}")
    if d.doc_mask:
        extras.append("document masking")
    if d.dropout:
        extras.append(f"dropout {d.dropout:g}")
    return [
        f"shape       {d.n_layer} layers x {d.n_embd} wide, context {d.seq_len}, "
        f"bias {'on' if d.bias else 'off'}",
        f"positions   {pos}",
        f"attention   {attn}",
        f"mlp         {mlp}",
        f"norm        {norm}",
        f"embeddings  {emb}",
        f"other       {', '.join(extras) or '-'}",
    ]


def run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE.format(presets=", ".join(PRESETS)), end="")
        return 0
    if argv and not argv[0].startswith("-"):
        if len(argv) > 1:
            raise UsageError("gptlab info RUN_DIR takes no other options")
        cfg, source = _run_config(Path(argv[0])), argv[0]
    else:
        cfg, _, source, _ = build_auto_config(argv)  # --auto.depth D: prints the derivation
    model_cfg = cfg.model
    counts = count_params(build_meta(model_cfg))
    print(f"model from {source}")
    for line in describe(model_cfg):
        print(f"  {line}")
    active = f", {counts.active:,} active per token" if counts.active != counts.total else ""
    print(f"parameters  {counts.total:,} ({counts.total / 1e6:.2f}M){active}")
    print(f"            {counts.non_embedding:,} without embedding lookup tables")
    flops = flops_per_token(model_cfg)
    print(
        f"FLOPs/token {flops / 1e6:,.2f}M to train (forward + backward) at context "
        f"{model_cfg.seq_len}; {flops / 3e6:,.2f}M forward"
    )
    mib = counts.total / 2**20
    print(f"weights     {4 * mib:,.1f} MiB in fp32, {2 * mib:,.1f} MiB in bf16")
    return 0
