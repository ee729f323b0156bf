"""BPETokenizer: byte-level BPE from mergeable ranks, a split pattern and special tokens.

One class serves our trained vocabularies and the pretrained encodings (gpt2, cl100k_base, ...):
a vocabulary is fully described by `ranks` (token bytes -> id), the split regex and the special
tokens, which is also exactly what tiktoken needs. Encoding runs on tiktoken by default; the
"reference" backend runs the pure-Python encoder in reference.py and gives identical ids (the
tests check it), which makes it the oracle and the version to read.

Saved as two readable files, never pickle: tokenizer.json (pattern, special tokens, roles, a
hash of the ranks) and ranks.tiktoken in tiktoken's own format, `base64(token bytes) id` per line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import operator
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import regex

from gptlab.tokenizer.base import CONFIG_FILE, Tokenizer, read_config
from gptlab.tokenizer.patterns import pattern_name_of
from gptlab.tokenizer.reference import ReferenceEncoder

RANKS_FILE = "ranks.tiktoken"
FORMAT_VERSION = 1
Backend = Literal["tiktoken", "reference"]
BACKENDS = ("tiktoken", "reference")


class BPETokenizer(Tokenizer):
    """Byte-level BPE. Ids are the ranks plus the special tokens' ids; every byte is a token,
    so any text encodes. `backend` picks the encoder: "tiktoken" (fast) or "reference"."""

    kind = "bpe"

    def __init__(
        self,
        ranks: Mapping[bytes, int],
        pattern: str,
        special_tokens: Mapping[str, int],
        *,
        name: str = "bpe",
        bos: str | None = None,
        eos: str | None = None,
        pad: str | None = None,
        backend: Backend = "tiktoken",
    ) -> None:
        _check_vocabulary(ranks, special_tokens, (bos, eos, pad))
        try:
            regex.compile(pattern)
        except regex.error as e:
            raise ValueError(f"split pattern does not compile ({e}): {pattern!r}") from None
        if backend not in BACKENDS:
            raise ValueError(f"unknown BPE backend {backend!r}; choose one of: tiktoken, reference")
        self.ranks = ranks
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self.name, self.bos, self.eos, self.pad = name, bos, eos, pad
        self.backend = backend
        self._vocab_size = 1 + max([*ranks.values(), *self.special_tokens.values()])
        self._bytes_of: list[bytes | None] = [None] * self._vocab_size  # id -> bytes it decodes to
        for token, i in ranks.items():
            self._bytes_of[i] = token
        for spelling, i in self.special_tokens.items():
            self._bytes_of[i] = spelling.encode("utf-8")
        self._reference = ReferenceEncoder(ranks, pattern)
        self._tiktoken = self._build_tiktoken() if backend == "tiktoken" else None
        self._ranks_text: str | None = None

    def _build_tiktoken(self):
        import tiktoken

        return tiktoken.Encoding(
            self.name,
            pat_str=self.pattern,
            mergeable_ranks=dict(self.ranks),
            special_tokens=self.special_tokens,
        )

    def with_backend(self, backend: Backend) -> BPETokenizer:
        """The same vocabulary encoded by another backend (the ranks are shared, not copied)."""
        return BPETokenizer(
            self.ranks,
            self.pattern,
            self.special_tokens,
            name=self.name,
            bos=self.bos,
            eos=self.eos,
            pad=self.pad,
            backend=backend,
        )

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pattern_name(self) -> str | None:
        """'gpt2' | 'gpt4' | 'o200k' when the split regex is one of ours, else None."""
        return pattern_name_of(self.pattern)

    # -- encoding ---------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        if self._tiktoken is None:
            return self._reference.encode_ordinary(text)
        return self._tiktoken.encode_ordinary(text)

    def encode(self, text: str, *, allowed_special: bool = False) -> list[int]:
        if self._tiktoken is None:
            return super().encode(text, allowed_special=allowed_special)
        if allowed_special:
            return self._tiktoken.encode(text, allowed_special="all")
        try:
            return self._tiktoken.encode(text, disallowed_special="all")
        except ValueError:  # tiktoken found a special spelling; raise our SpecialTokenError
            return super().encode(text)

    def encode_batch(
        self, texts: Sequence[str], *, allowed_special: bool = False, num_threads: int = 8
    ) -> list[list[int]]:
        if self._tiktoken is None:
            return super().encode_batch(
                texts, allowed_special=allowed_special, num_threads=num_threads
            )
        texts = list(texts)
        if allowed_special:
            return self._tiktoken.encode_batch(
                texts, num_threads=num_threads, allowed_special="all"
            )
        try:
            return self._tiktoken.encode_batch(texts, num_threads=num_threads)
        except ValueError:
            for text in texts:
                if self.find_special(text) is not None:
                    super().encode(text)  # raises our SpecialTokenError naming the token
            raise

    def encode_ordinary_batch(
        self, texts: Sequence[str], *, num_threads: int = 8
    ) -> list[list[int]]:
        """`encode_ordinary` over many texts, in threads."""
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary_batch(list(texts), num_threads=num_threads)
        if num_threads <= 1 or len(texts) <= 1:
            return [self.encode_ordinary(t) for t in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(self.encode_ordinary, texts))

    # -- decoding ---------------------------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (ints, or a 1-D array/tensor); special tokens decode to their spelling,
        invalid UTF-8 to U+FFFD. An id that is not in the vocabulary raises ValueError naming it."""
        if self._tiktoken is not None:
            try:
                return self._tiktoken.decode(ids, errors="replace")
            except (KeyError, OverflowError, TypeError):  # a bad id, or a container tiktoken
                return self._tiktoken.decode(self.check_ids(ids), errors="replace")  # can't read
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of `ids` (a token may end in the middle of a UTF-8 character)."""
        return b"".join(self._bytes_of[i] for i in self.check_ids(ids))  # type: ignore[misc]

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        """`ids` as a list of ints; ValueError naming the first entry that is not a token id of
        this vocabulary."""
        checked = []
        for i in ids:
            try:
                i = operator.index(i)  # also numpy and 0-d torch integers
            except TypeError:
                raise ValueError(f"token ids must be integers, got {i!r}") from None
            if not 0 <= i < self._vocab_size:
                raise ValueError(
                    f"token id {i} is out of range for this tokenizer "
                    f"(ids 0..{self._vocab_size - 1})"
                )
            if self._bytes_of[i] is None:
                raise ValueError(f"token id {i} is unused in this vocabulary ({self.name})")
            checked.append(i)
        return checked

    def token_to_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token: its UTF-8 spelling)."""
        (i,) = self.check_ids([token_id])
        return self._bytes_of[i]  # type: ignore[return-value]

    def token_bytes(self) -> np.ndarray:
        lengths = np.zeros(self._vocab_size, dtype=np.int32)  # (V,)
        for token, i in self.ranks.items():
            lengths[i] = len(token)
        return lengths

    # -- persistence ------------------------------------------------------------------------

    def ranks_text(self) -> str:
        """The ranks in tiktoken's file format: `base64(token bytes) id` per line, by id."""
        if self._ranks_text is None:
            by_id = sorted(self.ranks.items(), key=lambda item: item[1])
            self._ranks_text = "".join(
                f"{base64.b64encode(token).decode('ascii')} {i}\n" for token, i in by_id
            )
        return self._ranks_text

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ranks_path = directory / RANKS_FILE
        ranks_path.write_text(self.ranks_text(), encoding="ascii")
        config = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "pattern_name": self.pattern_name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "bos": self.bos,
            "eos": self.eos,
            "pad": self.pad,
            "vocab_size": self.vocab_size,
            "ranks_file": RANKS_FILE,
            "ranks_sha256": hashlib.sha256(self.ranks_text().encode("ascii")).hexdigest(),
        }
        config_path = directory / CONFIG_FILE
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
        return [config_path, ranks_path]

    @classmethod
    def load(cls, directory: str | Path, backend: Backend = "tiktoken") -> BPETokenizer:
        """Read a directory written by `save`; ValueError with the fix if anything is off."""
        directory = Path(directory)
        config = read_config(directory)
        if config.get("kind") != cls.kind:
            raise ValueError(f"{directory} holds a {config.get('kind')!r} tokenizer, not 'bpe'")
        fix = f"re-create {directory / CONFIG_FILE} with gptlab tokenizer train"
        try:
            ranks_name = str(config["ranks_file"])
            pattern, special = str(config["pattern"]), dict(config["special_tokens"])
            roles = [config.get(role) for role in ("bos", "eos", "pad")]
            expected_size = int(config["vocab_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{directory / CONFIG_FILE} lacks or mangles {e}; {fix}") from None
        ranks_path = directory / ranks_name
        try:
            text = ranks_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the ranks file {ranks_path} ({e}); {fix}") from None
        digest = config.get("ranks_sha256")
        if digest and hashlib.sha256(text.encode("ascii")).hexdigest() != digest:
            raise ValueError(f"{ranks_path} does not match its tokenizer.json (sha256); {fix}")
        tokenizer = cls(
            parse_ranks(text, ranks_path),
            pattern,
            special,
            name=str(config.get("name", "bpe")),
            bos=roles[0],
            eos=roles[1],
            pad=roles[2],
            backend=backend,
        )
        if tokenizer.vocab_size != expected_size:
            raise ValueError(
                f"{directory} says vocab_size {expected_size} but its files hold "
                f"{tokenizer.vocab_size} ids; {fix}"
            )
        return tokenizer

    def _fingerprint_data(self) -> bytes:
        return self.pattern.encode("utf-8") + b"\0" + self.ranks_text().encode("ascii")

    def describe(self) -> str:
        pattern = self.pattern_name or "custom"
        return (
            f"bpe tokenizer {self.name!r}, vocab {self.vocab_size:,} ({len(self.ranks):,} BPE "
            f"tokens + {len(self.special_tokens)} special), split pattern {pattern}"
        )


def parse_ranks(text: str, source: str | Path = "ranks") -> dict[bytes, int]:
    """Ranks from tiktoken's text format; ValueError naming the first bad line."""
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"{source} line {line_no} is not 'base64 rank': {line[:60]!r}; "
                "the file is corrupt, re-create or re-download it"
            ) from None
    return ranks


def _check_vocabulary(
    ranks: Mapping[bytes, int], special: Mapping[str, int], roles: Sequence[str | None]
) -> None:
    """ValueError unless ranks and special ids are distinct non-negative ids, every single byte
    is a token, and no special spelling contains another (which would make splitting ambiguous)."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"the ranks lack {len(missing)} single-byte tokens (first: {missing[0]})")
    ids = [*ranks.values(), *special.values()]
    if len(set(ids)) != len(ids):
        raise ValueError("token ids are not unique across the ranks and the special tokens")
    if min(ids) < 0:
        raise ValueError("token ids must be >= 0")
    for spelling in special:
        if not spelling:
            raise ValueError("a special token's spelling is empty")
        others = [s for s in special if s != spelling and spelling in s]
        if others:
            raise ValueError(f"special token {spelling!r} is part of {others[0]!r}; rename one")
    for role in roles:
        if role is not None and role not in special:
            raise ValueError(f"{role!r} is named as bos/eos/pad but is not a special token")
