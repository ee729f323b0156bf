"""The one tokenizer interface every kind implements: char, byte-level BPE, pretrained encodings.

A tokenizer maps text to ids and back, knows its special tokens (BOS/EOS/padding and reserved
chat tokens, which never come out of ordinary text), saves itself to a directory as readable
JSON/text (never pickle), and reports how many UTF-8 bytes each id stands for, so evaluation can
report bits per byte and compare runs across tokenizers.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CONFIG_FILE = "tokenizer.json"  # every kind writes this; "kind" says which class reads it


class SpecialTokenError(ValueError):
    """Text contains a special token's spelling (e.g. '<|endoftext|>') where none is allowed."""


class Tokenizer(ABC):
    """Text <-> ids. Subclasses set `kind` and implement the abstract methods."""

    kind: str = ""
    special_tokens: dict[str, int]  # spelling -> id; empty for a plain char tokenizer
    bos: str | None = None  # spelling of the token that starts every document, if any
    eos: str | None = None
    pad: str | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are 0..vocab_size-1)."""

    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`; special-token spellings are encoded as plain text."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""

    @abstractmethod
    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) int32: UTF-8 bytes each id decodes to; 0 for special tokens."""

    @abstractmethod
    def save(self, directory: str | Path) -> list[Path]:
        """Write the tokenizer into `directory` (tokenizer.json plus any data file it names);
        returns the files written."""

    # -- shared behaviour -------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special: bool = False) -> list[int]:
        """Ids of `text`. Special-token spellings become their ids when `allowed_special`;
        otherwise their presence raises SpecialTokenError naming the token."""
        found = self.find_special(text)
        if found is None:
            return self.encode_ordinary(text)
        if not allowed_special:
            raise SpecialTokenError(
                f"the text contains the special token {found!r}; encode it as ordinary text "
                "or allow special tokens explicitly"
            )
        return self._encode_with_special(text)

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: bool = False, num_threads: int = 8
    ) -> list[list[int]]:
        """`encode` over many texts, in threads (the fast encoders release the GIL)."""
        if num_threads <= 1 or len(texts) <= 1:
            return [self.encode(t, allowed_special=allowed_special) for t in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(lambda t: self.encode(t, allowed_special=allowed_special), texts))

    def find_special(self, text: str) -> str | None:
        """The first special-token spelling that occurs in `text`, or None."""
        for spelling in self.special_tokens:
            if spelling in text:
                return spelling
        return None

    def _encode_with_special(self, text: str) -> list[int]:
        """Split on special spellings; encode the pieces between them as ordinary text."""
        ids: list[int] = []
        rest = text
        while rest:
            hits = [(rest.find(s), s) for s in self.special_tokens if s in rest]
            if not hits:
                ids.extend(self.encode_ordinary(rest))
                break
            pos, spelling = min(hits, key=lambda h: (h[0], -len(h[1])))
            ids.extend(self.encode_ordinary(rest[:pos]))
            ids.append(self.special_tokens[spelling])
            rest = rest[pos + len(spelling) :]
        return ids

    def special_id(self, spelling: str | None) -> int | None:
        return None if spelling is None else self.special_tokens[spelling]

    @property
    def bos_id(self) -> int | None:
        return self.special_id(self.bos)

    @property
    def eos_id(self) -> int | None:
        return self.special_id(self.eos)

    @property
    def pad_id(self) -> int | None:
        return self.special_id(self.pad)

    def fingerprint(self) -> str:
        """A short hash of what the tokenizer does: equal fingerprints encode identically."""
        h = hashlib.sha256()
        h.update(self.kind.encode())
        h.update(json.dumps(sorted(self.special_tokens.items())).encode())
        h.update(self._fingerprint_data())
        return h.hexdigest()[:16]

    @abstractmethod
    def _fingerprint_data(self) -> bytes:
        """The bytes that define this tokenizer's mapping (vocabulary, merges, pattern)."""

    def describe(self) -> str:
        return f"{self.kind} tokenizer, vocab {self.vocab_size:,}"


def read_config(directory: str | Path) -> dict:
    """The parsed tokenizer.json of a saved tokenizer; ValueError with the fix if unreadable."""
    path = Path(directory) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{directory} holds no {CONFIG_FILE}; give a directory written by "
            "gptlab tokenizer train (or gptlab prepare)"
        ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable tokenizer file ({e}); re-create it") from None
