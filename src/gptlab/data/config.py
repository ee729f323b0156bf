"""DataConfig: which corpus, how to read and tokenize it, and how to batch it."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "shakespeare_char"
    """Registered name (shakespeare_char, gutenberg), a text/JSONL/Parquet file, a folder or
    glob of them, hf:NAME for a Hugging Face dataset, or a directory made by gptlab prepare."""
    tokenizer: str = "char"
    """'char' (built from the corpus), 'gpt2' (or cl100k_base / o200k_base when their files are
    present), or a directory written by gptlab tokenizer train."""
    val_fraction: float = 0.1
    """Share of the documents held out for validation (every 1/val_fraction-th document; a
    corpus with too few documents gives the tail of its last document instead)."""
    text_field: str = "text"
    """JSONL field, Parquet column or HF dataset column holding the text."""
    doc_separator: str = ""
    """Regex that separates documents inside a text file; empty: each file is one document."""
    hf_split: str = "train"
    """Split of a Hugging Face dataset to read."""
    hf_config: str = ""
    """Configuration (subset) name of a Hugging Face dataset, if it has several."""
    allow_special_text: bool = False
    """Encode special-token spellings found in documents (e.g. '<|endoftext|>') as plain text
    instead of refusing the corpus."""
    num_workers: int = 2
    """Tokenizer worker processes used by prepare (1: tokenize in this process)."""
    shard_tokens: int = 100_000_000
    """Tokens per shard file; a shard closes at the first document end past this size."""
    loader: Literal["random", "packed", "sequential"] = "random"
    """Training batches: random windows (nanoGPT), document packing (BOS-aligned best fit, no
    padding; gives document starts for model.doc_mask), or sequential streaming."""

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("data.dataset is empty; give a dataset name or a path to text")
        if not self.tokenizer:
            raise ValueError("data.tokenizer is empty; use char, gpt2 or a tokenizer directory")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.text_field:
            raise ValueError("data.text_field is empty; name the field that holds the text")
        if self.num_workers < 1:
            raise ValueError(f"data.num_workers must be >= 1, got {self.num_workers}")
        if self.shard_tokens < 1:
            raise ValueError(f"data.shard_tokens must be >= 1, got {self.shard_tokens}")
        if self.doc_separator:
            try:
                re.compile(self.doc_separator)
            except re.error as e:
                raise ValueError(
                    f"data.doc_separator {self.doc_separator!r} is not a valid regex ({e})"
                ) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Supervised finetuning on conversations (gptlab sft, docs/finetuning.md): the loss is
    the next-token cross-entropy on the assistant's tokens only. Off while `data` is empty."""

    data: str = ""
    """Conversation files, comma-separated: JSON or JSONL rows in the OpenAI `messages`
    schema, ShareGPT's `conversations` (from/value), or instruction/input/output rows
    (self-instruct's `instances` too); hf:NAME for a Hugging Face dataset when online."""
    template: Literal["auto", "special_tokens", "plain"] = "auto"
    """Chat template: 'auto' takes the tokenizer family's (special_tokens for gptlab BPE
    tokenizers with reserved chat tokens, plain text otherwise); the run records the one used."""
    packing: bool = True
    """Pack whole conversations into full rows with document masking (no cross-attention
    between them); off: one conversation per row, padded to the longest in the batch."""
    val_fraction: float = 0.05
    """Share of the conversations held out for validation (masked loss), at least one."""
    max_conversations: int = 0
    """Use only the first this many conversations of the data (0: all)."""

    def __post_init__(self) -> None:
        if self.template not in ("auto", "special_tokens", "plain"):
            raise ValueError(
                f"sft.template {self.template!r} must be auto, special_tokens or plain"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"sft.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_conversations < 0:
            raise ValueError(
                f"sft.max_conversations must be >= 0 (0: all), got {self.max_conversations}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.data)

    def paths(self) -> list[str]:
        return [p.strip() for p in self.data.split(",") if p.strip()]
