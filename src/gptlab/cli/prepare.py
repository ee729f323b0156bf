"""`gptlab prepare NAME_OR_PATH`: tokenize a registered dataset or local text into memmaps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

from gptlab.cli.common import locations, parse, setup_logging
from gptlab.data.config import DataConfig
from gptlab.data.prepare import load_meta, prepare


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareArgs:
    """Tokenize a registered dataset (e.g. shakespeare_char) or a UTF-8 text file or folder
    into train.bin / val.bin (uint16 token memmaps) and meta.json."""

    dataset: Annotated[str, tyro.conf.Positional]
    """Registered dataset name, or a path to a text file or a folder of text files."""
    tokenizer: str = "char"
    """Tokenizer: 'char'."""
    val_fraction: float = 0.1
    """Fraction of tokens held out for validation (the tail of the text)."""
    out: str = ""
    """Output directory (default: a folder in the gptlab cache named after the dataset)."""


def run(argv: list[str]) -> int:
    args = parse(PrepareArgs, argv, prog="gptlab prepare")
    cfg = DataConfig(dataset=args.dataset, tokenizer=args.tokenizer, val_fraction=args.val_fraction)
    setup_logging()
    out = prepare(
        cfg.dataset,
        cfg.tokenizer,
        cfg.val_fraction,
        locations(),
        Path(args.out) if args.out else None,
    )
    meta = load_meta(out)
    print(
        f"prepared {cfg.dataset}: {meta['tokens']['train']:,} train / "
        f"{meta['tokens']['val']:,} val tokens, vocab {meta['vocab_size']} -> {out}"
    )
    return 0
