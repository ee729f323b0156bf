"""Character-level tokenizer: one id per distinct character of the training text.

The vocabulary is the sorted set of characters, so it is deterministic for a given text and tiny
(65 for TinyShakespeare). Saved as readable JSON, never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE_NAME = "tokenizer.json"


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("character vocabulary has duplicates")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; a character outside the vocabulary raises ValueError naming it."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in this model's {self.vocab_size}-character "
                "vocabulary; remove it from the prompt"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps({"kind": self.kind, "chars": self.chars}), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        path = Path(directory) / FILE_NAME
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {data.get('kind')!r} tokenizer, not 'char'")
        return cls(data["chars"])
