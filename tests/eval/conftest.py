"""Eval fixtures: tokenizers with and without BOS, a bigram model whose log-probabilities are
known exactly, and small data files in the shared folder's layouts."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.patterns import get_pattern

CHARS = list(" \n:?.abcdefghijklmnopqrstuvwxyzAQ")


class BigramLM(nn.Module):
    """logits[b, t] = table[idx[b, t]]: the next token depends on the current one only, so every
    log-probability the scorer reports can be computed by hand from `table` (V, V)."""

    def __init__(self, table: torch.Tensor, seq_len: int = 64) -> None:
        super().__init__()
        V = table.size(0)
        self.cfg = types.SimpleNamespace(seq_len=seq_len, vocab_size=V, doc_mask=False)
        self.wte = nn.Embedding(V, 1)  # where the model lives, as for a GPT
        self.register_buffer("table", table.float())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.size(1) > self.cfg.seq_len:
            raise ValueError("longer than the context")
        return self.table[idx]  # (B, T, V)

    def logprob(self, prev: int, nxt: int) -> float:
        return torch.log_softmax(self.table[prev], dim=-1)[nxt].item()


@pytest.fixture
def char_tok() -> CharTokenizer:
    return CharTokenizer(CHARS)


@pytest.fixture
def byte_tok() -> BPETokenizer:
    """Byte-level BPE without merges (one id per byte) and a BOS token, id 256."""
    ranks = {bytes([i]): i for i in range(256)}
    special = {"<|bos|>": 256}
    return BPETokenizer(ranks, get_pattern("gpt2"), special, name="bytes", bos="<|bos|>")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder in the shared layout with a few examples of every benchmark."""
    root = tmp_path / "data"
    hs = root / "hellaswag"
    hs.mkdir(parents=True)
    hs.joinpath("hellaswag_val_full.txt").write_text(
        "cooking: a man cuts a\n1\nbed.\nfish.\ncar.\nsky.\n"
        "running: she runs to the\n0\nend.\nbox.\ncup.\ndoor.\n"
        "reading: he reads a\n2\nhat.\nsea.\nbook.\nfork.\n",
        encoding="utf-8",
    )
    write_jsonl(
        root / "lambada" / "lambada_test.jsonl",
        [{"text": "the cat sat on the mat"}, {"text": "a dog ran to a dog"}],
    )
    write_jsonl(
        root / "arc_easy" / "arc_easy_test.jsonl",
        [
            {"query": "Question: what is up?", "choices": ["sky", "sea", "mud"], "gold": 0},
            {"query": "Question: what is wet?", "choices": ["sun", "sea"], "gold": 1},
        ],
    )
    write_jsonl(
        root / "piqa" / "valid.jsonl",
        [
            {"goal": "open a jar", "sol1": "twist the lid", "sol2": "eat the lid"},
            {"goal": "dry hair", "sol1": "use water", "sol2": "use a towel"},
        ],
    )
    (root / "piqa" / "valid-labels.lst").write_text("0\n1\n", encoding="utf-8")
    return root
