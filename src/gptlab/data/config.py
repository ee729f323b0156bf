"""DataConfig: which corpus and tokenizer to train on."""

from __future__ import annotations

import dataclasses

TOKENIZERS = ("char",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "shakespeare_char"
    """Registered dataset name, a UTF-8 text file or folder, or a prepared directory."""
    tokenizer: str = "char"
    """Tokenizer to prepare the text with: 'char' (one id per character)."""
    val_fraction: float = 0.1
    """Fraction of the tokens held out (the tail of the corpus) for validation."""

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("data.dataset is empty; give a dataset name or a path to text")
        if self.tokenizer not in TOKENIZERS:
            choices = ", ".join(TOKENIZERS)
            raise ValueError(f"data.tokenizer {self.tokenizer!r} is unknown; use one of {choices}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
