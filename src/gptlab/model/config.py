"""ModelConfig: the architecture, and nothing else (no data, optimizer or device settings).

A checkpoint stores this section and the model is rebuilt from it alone. Later architecture
choices (positions, norms, MLP kinds, MoE, ...) become fields here with defaults that keep the
GPT-2 design, so old configs keep meaning the same model.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a GPT-2-style decoder-only transformer."""

    n_layer: int = 6
    """Number of transformer blocks."""
    n_head: int = 6
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 384
    """Model width C (residual stream size)."""
    seq_len: int = 256
    """Context length T: the most tokens the model attends over."""
    vocab_size: int = 65
    """Vocabulary size V; set from the prepared data's tokenizer when training."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (0 disables it)."""
    bias: bool = True
    """Use biases in linear layers and LayerNorms (GPT-2 does; many modern models don't)."""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd {self.n_embd} is not divisible by model.n_head {self.n_head}; "
                "pick n_embd as a multiple of n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        """D, the width of one attention head."""
        return self.n_embd // self.n_head
