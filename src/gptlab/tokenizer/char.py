"""Character-level tokenizer: one id per distinct character of the training text.

The vocabulary is the sorted set of characters, so it is deterministic for a given text and tiny
(65 for TinyShakespeare). It has no special tokens by default, which keeps it identical to
nanoGPT's; documents are then delimited by the prepared data's document index alone. Saved as
readable JSON, never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gptlab.tokenizer.base import CONFIG_FILE, Tokenizer, read_config

FILE_NAME = CONFIG_FILE


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("character vocabulary has duplicates")
        if any(len(c) != 1 for c in chars):
            raise ValueError("a character vocabulary entry is not exactly one character")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`; a character outside the vocabulary raises ValueError naming it."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in this model's {self.vocab_size}-character "
                "vocabulary; remove it from the prompt"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.chars], dtype=np.int32)

    def save(self, directory: str | Path) -> list[Path]:
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps({"kind": self.kind, "chars": self.chars}), encoding="utf-8")
        return [path]

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        data = read_config(directory)
        if data.get("kind") != cls.kind:
            raise ValueError(f"{directory} holds a {data.get('kind')!r} tokenizer, not 'char'")
        return cls(data["chars"])

    def _fingerprint_data(self) -> bytes:
        return "".join(self.chars).encode("utf-8")
