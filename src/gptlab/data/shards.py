"""The shard format of a prepared directory: writing shards, and opening one split as
memory-mapped shards plus where documents start.

`ShardWriter` appends documents to `{split}_NNNNN.bin` files (closing a shard only at a
document end) and records each shard's document starts (`.docs.npy`), token count and sha256.

Opening checks what can be checked cheaply, so a damaged dataset fails before training instead
of as a crash or silent garbage mid-run: every shard's size against meta.json (truncation), the
document index (sorted, inside the shard, BOS at each start), and, for splits under
`VERIFY_BYTES`, the sha256 of every shard and that every id is inside the vocabulary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.registry import sha256_file
from gptlab.errors import GptlabError

META = "meta.json"
VERIFY_BYTES = 1 << 30  # hash and range-check splits up to 1 GiB on open (about 1 s)


@dataclasses.dataclass
class TokenShards:
    """The token arrays of one split and its documents: `docs` is (n_docs, 3) int64 rows of
    (shard, start, end), in corpus order."""

    shards: list[np.ndarray]
    docs: np.ndarray
    vocab_size: int
    bos_id: int | None = None

    @classmethod
    def from_array(cls, tokens: np.ndarray, vocab_size: int | None = None) -> TokenShards:
        """One in-memory array holding one document (tests, small experiments)."""
        vocab = int(tokens.max()) + 1 if vocab_size is None else vocab_size
        return cls([tokens], np.array([[0, 0, len(tokens)]], dtype=np.int64), vocab)

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def n_docs(self) -> int:
        return len(self.docs)


def load_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GptlabError(
            f"prepared data {directory} has no readable {META} ({e}); re-run gptlab prepare"
        ) from None
    return meta


def open_split(directory: Path, split: str) -> TokenShards:
    """Memory-map the shards of `split` in a prepared directory, checking them (module doc)."""
    meta = load_meta(directory)
    bos_id = meta.get("bos_id")
    dtype = np.dtype(meta["dtype"])
    entries = _shard_entries(meta, split)
    shards: list[np.ndarray] = []
    rows = []
    for k, entry in enumerate(entries):
        path = directory / entry["file"]
        expected = entry["tokens"] * dtype.itemsize
        size = path.stat().st_size if path.is_file() else -1
        if size != expected:
            raise GptlabError(
                f"{path} has {size} bytes but meta.json expects {entry['tokens']} tokens "
                f"({expected} bytes); delete {directory} and re-run gptlab prepare"
            )
        tokens = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        starts = _doc_starts(directory, entry, len(tokens))
        if bos_id is not None and len(starts) and (tokens[starts] != bos_id).any():
            raise GptlabError(
                f"{path} does not begin every document with BOS; the shard or its index is "
                f"corrupt: delete {directory} and re-run gptlab prepare"
            )
        ends = np.append(starts[1:], len(tokens))
        rows.append(np.stack([np.full_like(starts, k), starts, ends], axis=1))
        shards.append(tokens)
    if sum(e["tokens"] for e in entries) * dtype.itemsize <= VERIFY_BYTES:
        _verify(directory, entries, shards, meta["vocab_size"])
    docs = np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)
    return TokenShards(shards, docs, meta["vocab_size"], bos_id)


def _verify(
    directory: Path, entries: list[dict[str, Any]], shards: list[np.ndarray], vocab_size: int
) -> None:
    """Full check: sha256 of every shard (when recorded) and every id < vocab_size."""
    for entry, tokens in zip(entries, shards, strict=True):
        path = directory / entry["file"]
        if "sha256" in entry and hashlib.sha256(tokens.tobytes()).hexdigest() != entry["sha256"]:
            raise GptlabError(
                f"{path} does not match the sha256 in meta.json: the shard is corrupt; "
                f"delete {directory} and re-run gptlab prepare"
            )
        if len(tokens) and int(tokens.max()) >= vocab_size:
            raise GptlabError(
                f"{path} holds id {int(tokens.max())}, outside the vocabulary of {vocab_size}; "
                f"delete {directory} and re-run gptlab prepare"
            )


def _shard_entries(meta: dict[str, Any], split: str) -> list[dict[str, Any]]:
    if meta.get("format_version", 1) == 1:  # one {split}.bin, one document
        return [{"file": f"{split}.bin", "tokens": meta["tokens"][split]}]
    try:
        return meta["splits"][split]["shards"]
    except KeyError:
        raise GptlabError(f"meta.json has no {split!r} split; re-run gptlab prepare") from None


def _doc_starts(directory: Path, entry: dict[str, Any], n_tokens: int) -> np.ndarray:
    if "doc_index" not in entry:
        return np.zeros(1 if n_tokens else 0, dtype=np.int64)
    path = directory / entry["doc_index"]
    try:
        starts = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise GptlabError(
            f"document index {path} is unreadable ({e}); delete {directory} and re-run "
            "gptlab prepare"
        ) from None
    ok = (
        starts.ndim == 1
        and len(starts) == entry.get("docs", len(starts))
        and (len(starts) == 0 or (starts[0] == 0 and starts[-1] < n_tokens))
        and bool(np.all(np.diff(starts) > 0))
    )
    if not ok:
        raise GptlabError(
            f"document index {path} does not fit its shard; delete {directory} and re-run "
            "gptlab prepare"
        )
    return starts.astype(np.int64)


class ShardWriter:
    """Appends documents of one split to numbered shards, closing a shard at a document end."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype = directory, split, dtype
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None
        self._starts: list[int] = []
        self._n = 0  # tokens in the open shard

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115
        self.shards.append({"file": name})
        self._starts, self._n = [], 0

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        entry = self.shards[-1]
        docs_name = entry["file"].removesuffix(".bin") + ".docs.npy"
        np.save(self.directory / docs_name, np.asarray(self._starts, dtype=np.int64))
        entry |= {
            "tokens": self._n,
            "docs": len(self._starts),
            "doc_index": docs_name,
            "sha256": sha256_file(self.directory / entry["file"]),
        }
        self._file = None

    def write(self, ids: np.ndarray, new_doc: bool) -> None:
        """Append ids; `new_doc` marks the start of a document (where a shard may end)."""
        if new_doc and (self._file is None or self._n >= self.shard_tokens):
            self._close()
            self._open()
        if new_doc:
            self._starts.append(self._n)
        assert self._file is not None
        self._file.write(ids.astype(self.dtype, copy=False).tobytes())
        self._n += len(ids)

    def last_doc_length(self) -> int:
        return self._n - self._starts[-1] if self._starts else 0

    def pop_tail(self, n: int) -> np.ndarray:
        """Remove and return the last n tokens (all inside the last document)."""
        assert self._file is not None and 0 < n < self.last_doc_length()
        self._file.flush()
        path = self.directory / self.shards[-1]["file"]
        keep = self._n - n
        tail = np.fromfile(path, dtype=self.dtype, offset=keep * self.dtype.itemsize)
        self._file.truncate(keep * self.dtype.itemsize)
        self._file.seek(keep * self.dtype.itemsize)
        self._n = keep
        return tail

    def finish(self) -> dict[str, Any]:
        self._close()
        return {
            "tokens": sum(s["tokens"] for s in self.shards),
            "docs": sum(s["docs"] for s in self.shards),
            "shards": self.shards,
        }
