"""ModelConfig: the architecture, and nothing else (no data, optimizer or device settings).

A checkpoint stores this section and the model is rebuilt from it alone. Every architecture
choice is a field here: the defaults are GPT-2 (learned positions, LayerNorm, GELU MLP, full
multi-head attention, tied embeddings), and each modern variant is one field away. The model
code picks small named pieces from these fields (a norm kind, an MLP kind, a position scheme)
rather than threading booleans through every forward. Docs: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
from typing import Literal

PosEmb = Literal["learned", "rope", "none", "alibi"]
RopeScaling = Literal["none", "linear", "yarn"]
Norm = Literal["layernorm", "rmsnorm"]
MlpKind = Literal["gelu", "gelu_tanh", "swiglu", "relu2"]
AttnBackend = Literal["sdpa", "math", "flex"]


def _torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch, read from package metadata (no torch import)."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return (0, 0)
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, multiple * round(x / multiple))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """Mixture of experts: replace the MLP of some blocks by n_experts MLPs and a router.

    Each token goes to its top_k experts (weighted by the router's probabilities); shared
    experts see every token. n_experts = 0 (the default) turns MoE off.
    """

    n_experts: int = 0
    """Routed experts per MoE layer (0 = dense model, no MoE)."""
    top_k: int = 2
    """Experts each token is sent to."""
    n_shared_experts: int = 0
    """Always-on experts that process every token (DeepSeekMoE)."""
    d_expert: int | None = None
    """Hidden width of one expert; None = the model's MLP width (model.d_ff or its default)."""
    capacity_factor: float | None = None
    """Slots per expert = capacity_factor * tokens * top_k / n_experts; tokens over it are
    dropped (they skip the MLP). None = no limit, nothing is dropped."""
    aux_loss_coef: float = 0.01
    """Weight of the Switch load-balancing loss E * sum_e f_e * P_e (0 turns it off)."""
    z_loss_coef: float = 0.001
    """Weight of the router z-loss mean(logsumexp(router logits)^2) (0 turns it off)."""
    bias_balancing: bool = False
    """Aux-loss-free balancing (DeepSeek-V3): a per-expert bias, added to the scores only to pick
    experts, moves toward balance after every forward in training."""
    bias_update_rate: float = 0.001
    """Step size of that bias update: b_e += rate * sign(mean load - load_e)."""
    every: int = 1
    """Make every k-th block MoE (blocks k-1, 2k-1, ...); 1 = all blocks."""
    layers: tuple[int, ...] = ()
    """Explicit 0-based block indices to make MoE; overrides `every` when non-empty."""

    def __post_init__(self) -> None:
        if self.n_experts < 0:
            raise ValueError(f"model.moe.n_experts must be >= 0, got {self.n_experts}")
        if not self.enabled:
            return
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(
                f"model.moe.top_k {self.top_k} must be between 1 and model.moe.n_experts "
                f"{self.n_experts}"
            )
        if self.n_shared_experts < 0 or self.every < 1:
            raise ValueError("model.moe.n_shared_experts must be >= 0 and model.moe.every >= 1")
        if self.d_expert is not None and self.d_expert < 1:
            raise ValueError(f"model.moe.d_expert must be >= 1, got {self.d_expert}")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(
                f"model.moe.capacity_factor must be > 0 (or None for no limit), got "
                f"{self.capacity_factor}"
            )
        if min(self.aux_loss_coef, self.z_loss_coef, self.bias_update_rate) < 0:
            raise ValueError("model.moe loss coefficients and bias_update_rate must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.n_experts > 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A decoder-only transformer: GPT-2 by default, modern variants by field."""

    # --- shape
    n_layer: int = 6
    """Number of transformer blocks."""
    n_head: int = 6
    """Attention (query) heads per block; must divide n_embd."""
    n_embd: int = 384
    """Model width C (residual stream size)."""
    seq_len: int = 256
    """Context length T: the most tokens the model attends over."""
    vocab_size: int = 65
    """Vocabulary size V; set from the prepared data's tokenizer when training."""
    vocab_multiple: int = 64
    """Pad the embedding/output rows to a multiple of this (fast matmul shapes); the extra
    logits are cropped off, so they never get probability. 1 = no padding."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (0 disables it)."""
    bias: bool = True
    """Biases in linear layers and LayerNorms (GPT-2 has them; most modern models don't)."""

    # --- positions
    pos_emb: PosEmb = "learned"
    """How the model knows token order: a learned table (GPT-2), rotary embeddings (RoPE),
    none (causal masking alone), or ALiBi's linear distance penalty."""
    rope_theta: float = 10000.0
    """RoPE base: frequencies are theta^(-2i/D)."""
    rope_scaling: RopeScaling = "none"
    """Context extension for RoPE: linear position interpolation or YaRN."""
    rope_factor: float = 1.0
    """Scaling factor s for rope_scaling (the context is stretched s times)."""

    # --- norms
    norm: Norm = "layernorm"
    """Normalisation before each sublayer and at the end: LayerNorm or RMSNorm."""
    norm_weight: bool = True
    """Learnable per-channel gain in every norm (off = parameter-free norms)."""
    norm_eps: float = 1e-5
    """Epsilon inside the norms."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before attention (stabilises the logits)."""

    # --- MLP
    mlp: MlpKind = "gelu"
    """Feed-forward kind: GELU (exact, erf), gelu_tanh (GELU's tanh approximation, as the
    original GPT-2 weights were trained with), SwiGLU (LLaMA) or squared ReLU (Primer,
    modded-nanogpt)."""
    d_ff: int | None = None
    """MLP hidden width; None = 4C for gelu/relu2 and 8/3*C (rounded to 32) for swiglu, which
    keeps the parameter count about equal."""

    # --- attention
    n_kv_head: int | None = None
    """Key/value heads (GQA); None = n_head (multi-head), 1 = multi-query; must divide n_head."""
    attn_softcap: float | None = None
    """Cap attention scores smoothly: s -> cap * tanh(s / cap) (Gemma 2 uses 50)."""
    logit_softcap: float | None = None
    """Cap output logits the same way (Gemma 2: 30, modded-nanogpt: 15)."""
    window: int | None = None
    """Sliding-window attention: each token sees itself and the window-1 tokens before it.
    None = full causal attention."""
    window_pattern: str = ""
    """Which blocks use the window, as a string of S (sliding) and L (full) cycled over the
    layers, e.g. SSSL; empty = every block slides when `window` is set."""
    global_tokens: int = 0
    """Tokens at the start of a row that every query may attend to even outside its window
    (attention sinks)."""
    attn_backend: AttnBackend = "sdpa"
    """sdpa: torch's fused kernels; math: the explicit reference (softmax(QK^T/sqrt(D))V);
    flex: torch FlexAttention (torch >= 2.5), block-sparse masks without a dense T x T mask."""

    # --- init and embeddings
    zero_init_proj: bool = False
    """Initialise the attention and MLP output projections to zero, so each block starts as
    the identity (modded-nanogpt)."""
    tie_embeddings: bool = True
    """Share one (V, C) matrix between the token embedding and the output head."""
    embed_scale: bool = False
    """Multiply token embeddings by sqrt(C) (Gemma, the original Transformer)."""

    # --- extras
    moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
    """Mixture-of-experts section (off unless moe.n_experts > 0)."""
    mtp_heads: int = 0
    """Multi-token prediction: extra heads predicting tokens t+2 ... t+1+mtp_heads."""
    mtp_weights: tuple[float, ...] = ()
    """Loss weight of each extra head; empty = 0.3 each."""
    doc_mask: bool = False
    """Document masking for packed rows: attention never crosses a document start and positions
    restart per document (the batch supplies the document starts)."""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd {self.n_embd} is not divisible by model.n_head {self.n_head}; "
                "pick n_embd as a multiple of n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(
                f"model.n_kv_head {self.n_kv_head} must be >= 1 and divide model.n_head "
                f"{self.n_head} (each kv head serves n_head / n_kv_head query heads)"
            )
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(
                f"RoPE rotates pairs of channels, so the head dimension must be even; "
                f"n_embd / n_head = {self.head_dim}"
            )
        if self.rope_theta <= 0 or self.rope_factor < 1.0:
            raise ValueError("model.rope_theta must be > 0 and model.rope_factor >= 1")
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be > 0, got {self.norm_eps}")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"model.d_ff must be >= 1, got {self.d_ff}")
        for name in ("attn_softcap", "logit_softcap"):
            cap = getattr(self, name)
            if cap is not None and cap <= 0:
                raise ValueError(f"model.{name} must be > 0 (or None for no cap), got {cap}")
        if self.window is not None and self.window <= 0:
            raise ValueError(
                f"model.window must be a positive number of tokens (or None for full "
                f"attention), got {self.window}"
            )
        if self.window_pattern:
            if set(self.window_pattern) - {"S", "L"}:
                raise ValueError(
                    f"model.window_pattern {self.window_pattern!r} may only hold S (sliding) "
                    "and L (full), e.g. SSSL"
                )
            if self.window is None:
                raise ValueError("model.window_pattern needs model.window (the window size)")
        if self.global_tokens < 0:
            raise ValueError(f"model.global_tokens must be >= 0, got {self.global_tokens}")
        if self.attn_backend == "flex" and _torch_version() < (2, 5):  # a torch older than
            # gptlab's requirement (installed with --no-deps, say): say so instead of crashing
            raise ValueError(
                "model.attn_backend flex needs torch >= 2.5 (FlexAttention); upgrade torch or "
                "use sdpa"
            )
        if self.attn_backend == "flex" and self.dropout > 0:
            raise ValueError(
                "model.attn_backend flex has no attention dropout; set model.dropout 0 or use sdpa"
            )
        if self.mtp_heads < 0:
            raise ValueError(f"model.mtp_heads must be >= 0, got {self.mtp_heads}")
        if self.mtp_weights and len(self.mtp_weights) != self.mtp_heads:
            raise ValueError(
                f"model.mtp_weights has {len(self.mtp_weights)} entries but model.mtp_heads is "
                f"{self.mtp_heads}; give one weight per extra head or none"
            )
        if self.moe.enabled:
            bad = [i for i in self.moe.layers if not 0 <= i < self.n_layer]
            if bad:
                raise ValueError(
                    f"model.moe.layers {bad} are outside 0..{self.n_layer - 1} (block indices)"
                )

    # --- derived values: one place, used by the model and by the accounting

    @property
    def head_dim(self) -> int:
        """D, the width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (n_kv_head, or n_head when unset)."""
        return self.n_kv_head or self.n_head

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and output matrices: vocab_size rounded up to vocab_multiple."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def ff_width(self) -> int:
        """Hidden width of the dense MLP."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            return _round_to(8 * self.n_embd / 3, 32)
        return 4 * self.n_embd

    @property
    def expert_width(self) -> int:
        """Hidden width of one MoE expert."""
        return self.moe.d_expert or self.ff_width

    def is_moe_layer(self, i: int) -> bool:
        if not self.moe.enabled:
            return False
        if self.moe.layers:
            return i in self.moe.layers
        return (i + 1) % self.moe.every == 0

    def layer_window(self, i: int) -> int | None:
        """Window size of block i (None = full attention)."""
        if self.window is None:
            return None
        if not self.window_pattern:
            return self.window
        return self.window if self.window_pattern[i % len(self.window_pattern)] == "S" else None

    @property
    def mtp_loss_weights(self) -> tuple[float, ...]:
        return self.mtp_weights or (0.3,) * self.mtp_heads


LORA_TARGETS = ("q", "k", "v", "o", "mlp_in", "mlp_out")
LORA_GROUPS = {"attn": ("q", "k", "v", "o"), "mlp": ("mlp_in", "mlp_out")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021): W x + (alpha / rank) B A x on the targeted linear
    layers, the base weights frozen (model/lora.py, docs/finetuning.md). rank 0: off."""

    rank: int = 0
    """Rank r of each adapter (0: no LoRA, train every weight)."""
    alpha: float = 16.0
    """Scale numerator: the adapter's output is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    targets: str = "q,v"
    """Comma-separated layers to adapt: q, k, v (parts of attn.qkv), o (attn.proj), mlp_in
    (mlp.fc), mlp_out (mlp.proj); 'attn' = q,k,v,o, 'mlp' = mlp_in,mlp_out, 'all' = both."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0: off), got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        self.target_names()  # ValueError on an unknown name

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def target_names(self) -> tuple[str, ...]:
        """The targets as LORA_TARGETS names, groups expanded, in LORA_TARGETS order."""
        names: set[str] = set()
        for raw in self.targets.split(","):
            name = raw.strip()
            if name == "all":
                names.update(LORA_TARGETS)
            elif name in LORA_GROUPS:
                names.update(LORA_GROUPS[name])
            elif name in LORA_TARGETS:
                names.add(name)
            else:
                raise ValueError(
                    f"lora.targets: {name!r} names no layer; use any of "
                    f"{', '.join(LORA_TARGETS)} or attn, mlp, all (comma-separated)"
                )
        return tuple(t for t in LORA_TARGETS if t in names)
