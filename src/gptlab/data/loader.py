"""Training batches from prepared shards: random windows, document packing, sequential streaming.

Every loader yields `(x, y, doc_starts)`: x and y are (B, T) int64 with y = x shifted by one, and
doc_starts is a (B, T) bool mask of where a document begins in x (or None when not asked for),
which the model's document masking uses. All three are
- distributed-aware: rank r of W reads a disjoint part of the data (a slice of every shard for
  windows and streaming, every W-th document for packing);
- deterministic for a seed, and resumable: `state_dict()` is a few integers, and a loader that
  loads it yields exactly the batches the original would have yielded next.

Packing is BOS-aligned best fit (as in nanochat): each row of T+1 tokens is filled with whole
documents, each starting with its BOS, choosing the largest buffered document that still fits.
When none fits, the shortest is cropped to fill the row and its remainder dropped, so there is
no padding at all. A document longer than a row first gives up full rows of its own.
"""

from __future__ import annotations

import bisect
from typing import Any, Literal

import numpy as np
import torch

from gptlab.data.shards import TokenShards
from gptlab.seeding import hash_indices

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
LoaderKind = Literal["random", "packed", "sequential"]


def _starts_mask(data: TokenShards, shard: np.ndarray, begin: np.ndarray, T: int) -> torch.Tensor:
    """(B, T) bool: True where a document starts inside each window [begin, begin + T)."""
    mask = np.zeros((len(begin), T), dtype=bool)
    for row, (s, b) in enumerate(zip(shard, begin, strict=True)):
        docs = data.docs[data.docs[:, 0] == s, 1]  # starts of shard s, sorted
        lo, hi = np.searchsorted(docs, [b, b + T])
        mask[row, docs[lo:hi] - b] = True
    return torch.from_numpy(mask)


def _to_batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.from_numpy(rows.astype(np.int64))  # (B, T+1)
    return w[:, :-1], w[:, 1:]  # (B, T), (B, T)


class RandomWindowLoader:
    """B windows of T+1 tokens at uniformly random offsets (nanoGPT's get_batch).

    Sequence j of the run (counted over all ranks) starts at an offset hashed from (seed, j),
    and each micro-batch takes the next B sequences, rank r of W the r-th B of the next W B.
    So the data depends only on how many sequences the run has consumed: 1 batch of 8 = 2
    micro-batches of 4 = 2 ranks x 4, and a run resumed on another number of ranks continues
    the same stream.
    """

    world_size_independent = True  # the state means the same for any number of ranks

    def __init__(
        self,
        data: TokenShards,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        with_doc_starts: bool = False,
    ) -> None:
        self.data, self.seed = data, seed
        self.rank, self.world_size = rank, world_size
        self.with_doc_starts = with_doc_starts
        self.consumed = 0  # sequences drawn so far by all ranks together
        self.set_shape(batch_size, seq_len)

    def set_shape(self, batch_size: int, seq_len: int) -> None:
        """Draw (batch_size, seq_len) batches from now on (staged training)."""
        self.batch_size, self.seq_len = batch_size, seq_len
        sizes = np.array([len(s) for s in self.data.shards], dtype=np.int64)  # (S,)
        self._valid = np.maximum(sizes - seq_len, 0)  # window starts per shard
        self._cum = np.cumsum(self._valid)
        if self._cum[-1] <= 0:
            raise ValueError(
                f"no shard holds one training window of seq_len + 1 = {seq_len + 1} tokens; "
                "use more text or a smaller --model.seq_len"
            )
        self._offsets = np.arange(seq_len + 1)  # (T+1,)

    def next_batch(self) -> Batch:
        B = self.batch_size
        first = self.consumed + self.rank * B
        self.consumed += self.world_size * B
        sequences = np.arange(first, first + B)  # (B,) global sequence numbers
        idx = (hash_indices(self.seed, sequences) % np.uint64(self._cum[-1])).astype(np.int64)
        shard = np.searchsorted(self._cum, idx, side="right")  # (B,)
        start = idx - (self._cum[shard] - self._valid[shard])  # (B,)
        if len(self.data.shards) == 1:
            rows = self.data.shards[0][start[:, None] + self._offsets]  # (B, T+1)
        else:
            rows = np.stack(
                [
                    self.data.shards[s][b : b + self.seq_len + 1]
                    for s, b in zip(shard, start, strict=True)
                ]
            )
        x, y = _to_batch(rows)
        starts = (
            _starts_mask(self.data, shard, start, self.seq_len) if self.with_doc_starts else None
        )
        return x, y, starts

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "consumed" not in state:
            raise ValueError(
                "this checkpoint's loader state is from an older gptlab (a generator state, "
                "not a sequence count) and cannot continue the same data stream"
            )
        self.seed, self.consumed = state["seed"], state["consumed"]


class SequentialLoader:
    """Consecutive windows, shard after shard: every token once per epoch, in corpus order.

    The corpus is read as a stream of blocks of B·T(+1) tokens; rank r of W takes blocks r,
    r + W, ... of it, so ranks read disjoint data, and the position (epoch, shard, offset) is
    the same on every rank and means the same for any W. A shard's tail shorter than a block
    is skipped.
    """

    world_size_independent = True

    def __init__(
        self,
        data: TokenShards,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        with_doc_starts: bool = False,
    ) -> None:
        self.data = data
        self.rank, self.world_size = rank, world_size
        self.with_doc_starts = with_doc_starts
        self.set_shape(batch_size, seq_len)
        self.epoch, self.shard, self.pos = 0, 0, 0

    def set_shape(self, batch_size: int, seq_len: int) -> None:
        """Read (batch_size, seq_len) blocks from the current position on (staged training)."""
        self.batch_size, self.seq_len = batch_size, seq_len
        self.block = batch_size * seq_len
        if max(len(s) for s in self.data.shards) < self.block + 1:
            raise ValueError(
                f"no shard holds one block of batch x seq_len + 1 = {self.block + 1} tokens; "
                "use more text or a smaller batch or --model.seq_len"
            )

    def _fit(self) -> None:
        """Skip to the next shard (wrapping to a new epoch) until a whole block fits at pos."""
        while self.pos + self.block + 1 > len(self.data.shards[self.shard]):
            self.shard, self.pos = self.shard + 1, 0
            if self.shard == len(self.data.shards):
                self.shard, self.epoch = 0, self.epoch + 1

    def _advance(self) -> None:
        self.pos += self.block
        self._fit()

    def next_batch(self) -> Batch:
        self._fit()  # a tail shard, or a larger block after set_shape
        for _ in range(self.rank):  # this rank's block among the next W
            self._advance()
        shard, begin = self.shard, self.pos
        for _ in range(self.world_size - self.rank):
            self._advance()
        B, T = self.batch_size, self.seq_len
        block = np.asarray(self.data.shards[shard][begin : begin + B * T + 1])
        rows = np.lib.stride_tricks.sliding_window_view(block, T + 1)[::T]  # (B, T+1)
        x, y = _to_batch(rows)
        starts = None
        if self.with_doc_starts:
            first = begin + np.arange(B) * T
            starts = _starts_mask(self.data, np.full(B, shard), first, T)
        return x, y, starts

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard": self.shard, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.shard, self.pos = state["epoch"], state["shard"], state["pos"]


class PackedLoader:
    """BOS-aligned best-fit packing of whole documents into rows of T+1 tokens (module doc).

    Rank r of W packs documents r, r + W, ...: its state (buffer, cursor) belongs to that split,
    so a packed run resumes only on the same number of ranks.
    """

    world_size_independent = False

    def __init__(
        self,
        data: TokenShards,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        with_doc_starts: bool = True,
        buffer_docs: int = 256,
    ) -> None:
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.seed, self.rank = seed, rank
        self.with_doc_starts = with_doc_starts
        self.buffer_docs = buffer_docs
        self.my_docs = np.arange(rank, data.n_docs, world_size)  # this rank's documents
        if len(self.my_docs) == 0:
            raise ValueError(
                f"{data.n_docs} documents cannot be shared by {world_size} ranks; use the "
                "random or sequential loader, or more documents"
            )
        self.epoch, self.cursor, self.seq = 0, 0, 0
        self.dropped_tokens = 0
        self.buffer: list[tuple[int, int, int, int, int]] = []  # (length, seq, shard, a, b)
        self.ready: list[tuple[int, int, int]] = []  # whole rows cut from long documents
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.rank, epoch])
        return self.my_docs[rng.permutation(len(self.my_docs))]

    def _pull_document(self) -> None:
        if self.cursor == len(self._order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        shard, a, b = (int(v) for v in self.data.docs[self._order[self.cursor]])
        self.cursor += 1
        self._add_piece(shard, a, b)

    def _add_piece(self, shard: int, a: int, b: int) -> None:
        R = self.seq_len + 1
        while b - a > R:  # a long document gives whole rows first
            self.ready.append((shard, a, a + R))
            a += R
        if b - a >= 2:  # a 1-token remainder is no training example
            bisect.insort(self.buffer, (b - a, self.seq, shard, a, b))
            self.seq += 1

    def set_shape(self, batch_size: int, seq_len: int) -> None:
        """Pack rows of seq_len + 1 from now on (staged training): whole rows already cut from
        long documents are cut again at the new length."""
        self.batch_size = batch_size
        if seq_len != self.seq_len:
            self.seq_len, ready, self.ready = seq_len, self.ready, []
            for piece in ready:
                self._add_piece(*piece)

    def _row(self) -> list[tuple[int, int, int]]:
        """Pieces (shard, a, b) filling one row of exactly T+1 tokens."""
        pieces, room = [], self.seq_len + 1
        while room > 0:
            while len(self.buffer) < self.buffer_docs and not self.ready:
                self._pull_document()
            if self.ready and not pieces:  # a whole row cut from a long document
                return [self.ready.pop(0)]
            if not self.buffer:  # only long documents so far: pull until a short piece comes
                self._pull_document()
                continue
            i = bisect.bisect_right(self.buffer, (room, float("inf"))) - 1
            if i >= 0:  # best fit: the largest document that fits the room left
                length, _, shard, a, b = self.buffer.pop(i)
                pieces.append((shard, a, b))
                room -= length
            else:  # nothing fits: crop the shortest to fill the row, drop its rest
                length, _, shard, a, b = self.buffer.pop(0)
                pieces.append((shard, a, a + room))
                self.dropped_tokens += length - room
                room = 0
        return pieces

    def next_batch(self) -> Batch:
        B, R = self.batch_size, self.seq_len + 1
        rows = np.empty((B, R), dtype=np.int64)  # (B, T+1)
        starts = np.zeros((B, R), dtype=bool)
        for r in range(B):
            col = 0
            for shard, a, b in self._row():
                rows[r, col : col + b - a] = self.data.shards[shard][a:b]
                starts[r, col] = True
                col += b - a
        x, y = _to_batch(rows)
        mask = torch.from_numpy(starts[:, :-1]) if self.with_doc_starts else None
        return x, y, mask

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,  # ready rows were cut at this shape
            "seq_len": self.seq_len,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seq": self.seq,
            "dropped_tokens": self.dropped_tokens,
            "buffer": [list(p) for p in self.buffer],
            "ready": [list(p) for p in self.ready],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = state["seed"], state["epoch"]
        self.batch_size = state.get("batch_size", self.batch_size)
        self.seq_len = state.get("seq_len", self.seq_len)
        self.cursor, self.seq = state["cursor"], state["seq"]
        self.dropped_tokens = state["dropped_tokens"]
        self.buffer = [tuple(p) for p in state["buffer"]]
        self.ready = [tuple(p) for p in state["ready"]]
        self._order = self._permutation(self.epoch)


LOADERS = {"random": RandomWindowLoader, "packed": PackedLoader, "sequential": SequentialLoader}


def build_loader(
    kind: LoaderKind,
    data: TokenShards,
    batch_size: int,
    seq_len: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    with_doc_starts: bool = False,
) -> RandomWindowLoader | PackedLoader | SequentialLoader:
    """The training loader named by `data.loader`."""
    return LOADERS[kind](
        data,
        batch_size,
        seq_len,
        seed,
        rank=rank,
        world_size=world_size,
        with_doc_starts=with_doc_starts,
    )


def fixed_batches(
    data: TokenShards,
    n_batches: int,
    batch_size: int,
    seq_len: int,
    seed: int,
    with_doc_starts: bool = False,
) -> list[Batch]:
    """A fixed list of random-window batches (same every call for a seed): evaluation sees the
    same data at every eval and in every run with that seed."""
    loader = RandomWindowLoader(data, batch_size, seq_len, seed, with_doc_starts=with_doc_starts)
    return [loader.next_batch() for _ in range(n_batches)]
