"""`gptlab prepare DATASET`: tokenize a corpus once into token shards, a document index and
meta.json (reused while sources, tokenizer and settings are unchanged)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

from gptlab.cli.common import UsageError, locations, parse, setup_logging
from gptlab.data.config import DataConfig
from gptlab.data.prepare import prepare
from gptlab.data.shards import load_meta

_DEFAULT = DataConfig()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareArgs:
    """Tokenize a registered dataset (shakespeare_char, gutenberg), text/JSONL/Parquet files,
    a folder or glob of them, or hf:NAME into shards for training."""

    dataset: Annotated[str, tyro.conf.Positional]
    """Registered name, file, folder, glob pattern, or hf:NAME (a Hugging Face dataset)."""
    tokenizer: str = _DEFAULT.tokenizer
    """'char', 'gpt2' (or cl100k_base / o200k_base), or a tokenizer directory."""
    val_fraction: float = _DEFAULT.val_fraction
    """Share of documents held out for validation."""
    text_field: str = _DEFAULT.text_field
    """JSONL field / Parquet or HF column holding the text."""
    doc_separator: str = _DEFAULT.doc_separator
    """Regex separating documents inside a text file (empty: one document per file)."""
    hf_split: str = _DEFAULT.hf_split
    """Split of a Hugging Face dataset."""
    hf_config: str = _DEFAULT.hf_config
    """Configuration name of a Hugging Face dataset."""
    allow_special_text: bool = _DEFAULT.allow_special_text
    """Encode special-token spellings inside documents as ordinary text instead of refusing."""
    num_workers: int = _DEFAULT.num_workers
    """Tokenizer worker processes."""
    shard_tokens: int = _DEFAULT.shard_tokens
    """Tokens per shard file (a shard ends at a document end)."""
    out: str = ""
    """Output directory (default: a folder in the gptlab cache named after the dataset)."""


def run(argv: list[str]) -> int:
    args = parse(PrepareArgs, argv, prog="gptlab prepare")
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    try:
        cfg = DataConfig(**{k: v for k, v in dataclasses.asdict(args).items() if k in fields})
    except ValueError as e:  # DataConfig's checks, e.g. a --doc-separator that is no regex
        raise UsageError(str(e)) from None
    setup_logging()
    out = prepare(cfg, locations(), Path(args.out) if args.out else None, progress=True)
    meta = load_meta(out)
    tokens, docs = meta["tokens"], meta.get("docs", {"train": 1, "val": 1})
    print(
        f"prepared {cfg.dataset}: {tokens['train']:,} train / {tokens['val']:,} val tokens in "
        f"{docs['train']:,} / {docs['val']:,} documents, vocab {meta['vocab_size']:,} -> {out}"
    )
    return 0
