"""Conversation data for chat finetuning: read files, tokenize with a template, batch them.

    (data/conversations.py reads the files into lists of Messages)
    tokenize_conversations  Messages -> ids + loss mask per conversation, cut to the context
    split_examples          a fixed held-out share for validation
    ChatLoader              (x, y, doc_starts) training batches; y = -1 where not supervised
    fixed_chat_batches      the evaluation batches: every held-out conversation once

The loss trains only the assistant's tokens, so y is -1 (ignored by the cross-entropy) on
prompts, role markers and padding. Two ways to batch (sft.packing):
- packing (default): rows of T+1 tokens filled with whole conversations, best fit from a
  buffer (the largest one that still fits the room left), the rest of a row padded. doc_starts
  marks each conversation's first token and the padding's, so with document masking nothing
  attends across conversations and positions restart. A conversation never crosses a row.
- padding: one conversation per row, right-padded to the longest in the micro-batch; simpler,
  but the padding costs compute (the packing-vs-padding benchmark measures how much).

The training stream is a pure function of the seed: epoch e is a seeded permutation of the
conversations, packed into rows on its own, and the stream is the rows of epoch 0, 1, ... .
Micro-batch j of the run, counted over all ranks, is rows [jB, (j+1)B), and rank r of W takes
micro-batches r, r+W, ... . The state is a global row count, so one rank taking W·A
micro-batches sees what W ranks taking A each see, and a run resumes on any number of ranks.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gptlab.errors import GptlabError
from gptlab.tokenizer.chat import ChatTemplate, Message

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
IGNORE = -1  # a target the loss skips (the model's masked cross-entropy)
SPLIT_SEED = 20240519  # the val split never depends on train.seed: every run holds out the same


@dataclasses.dataclass(frozen=True)
class ChatExamples:
    """Tokenized conversations: per conversation its ids (int32) and mask (bool, True where
    the token is a supervised target), plus counts of what tokenizing kept and dropped."""

    ids: list[np.ndarray]
    mask: list[np.ndarray]
    stats: dict[str, int]

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(a) for a in self.ids], dtype=np.int64)  # (N,)

    def subset(self, indices: Sequence[int]) -> ChatExamples:
        ids, mask = [self.ids[i] for i in indices], [self.mask[i] for i in indices]
        return ChatExamples(ids, mask, _content_stats(ids, mask))


def _content_stats(ids: list[np.ndarray], mask: list[np.ndarray]) -> dict[str, int]:
    return {
        "examples": len(ids),
        "tokens": int(sum(len(a) for a in ids)),
        "supervised_tokens": int(sum(int(m[1:].sum()) for m in mask)),
    }


def tokenize_conversations(
    conversations: Sequence[Sequence[Message]], template: ChatTemplate, max_tokens: int
) -> ChatExamples:
    """Render each conversation with `template`; one longer than max_tokens (seq_len + 1) is
    cut after its last assistant turn that fits, else at max_tokens (both counted); one with
    no supervised target left is skipped and counted."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (seq_len + 1), got {max_tokens}")
    ids_out, mask_out = [], []
    counts = {"truncated_at_turn": 0, "truncated_mid_turn": 0, "skipped_no_target": 0}
    for messages in conversations:
        r = template.render(messages)
        ids, mask = np.asarray(r.ids, dtype=np.int32), np.asarray(r.mask, dtype=np.bool_)
        cut, how = _cut(messages, r.turn_ends, mask, max_tokens)
        ids, mask = ids[:cut], mask[:cut]
        if not mask[1:].any():  # the first token is nobody's target
            counts["skipped_no_target"] += 1
            continue
        if how:
            counts[how] += 1
        ids_out.append(ids)
        mask_out.append(mask)
    return ChatExamples(ids_out, mask_out, {**_content_stats(ids_out, mask_out), **counts})


def _cut(
    messages: Sequence[Message], turn_ends: list[int], mask: np.ndarray, max_tokens: int
) -> tuple[int, str]:
    """Where to cut a rendering and which truncation that is ("" when it fits)."""
    if len(mask) <= max_tokens:
        return len(mask), ""
    for m, end in zip(reversed(messages), reversed(turn_ends), strict=True):
        if m.role == "assistant" and end <= max_tokens and mask[1:end].any():
            return end, "truncated_at_turn"
    return max_tokens, "truncated_mid_turn"


def split_examples(
    examples: ChatExamples, val_fraction: float
) -> tuple[ChatExamples, ChatExamples]:
    """(train, val): a share `val_fraction` held out by a fixed-seed draw, at least one each."""
    n = len(examples)
    if n < 2:
        raise GptlabError(
            f"{n} usable conversation(s) cannot be split into training and validation; "
            "give at least 2 conversations with an assistant reply"
        )
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val:])
    return examples.subset(train.tolist()), examples.subset(val.tolist())


# -- batching -----------------------------------------------------------------------------


def pack_rows(
    lengths: np.ndarray, order: np.ndarray, row_len: int, buffer_size: int
) -> list[list[int]]:
    """Best-fit packing: conversations taken in `order` through a buffer of `buffer_size`;
    each row takes the longest buffered one that fits the room left until none fits. Returns
    the rows as lists of conversation indices; every length must be <= row_len."""
    if len(order) and int(lengths[order].max()) > row_len:
        raise ValueError(f"a conversation is longer than a row of {row_len} tokens; crop it")
    rows, buffer, nxt = [], [], 0  # buffer: sorted (length, position in order, index)
    while True:
        row, room = [], row_len
        while True:
            while len(buffer) < buffer_size and nxt < len(order):
                i = int(order[nxt])
                bisect.insort(buffer, (int(lengths[i]), nxt, i))
                nxt += 1
            k = bisect.bisect_right(buffer, (room, len(order))) - 1
            if k < 0:
                break
            length, _, i = buffer.pop(k)
            row.append(i)
            room -= length
        if not row:
            return rows
        rows.append(row)


def _assemble(
    examples: ChatExamples, rows: Sequence[Sequence[int]], width: int, pad_id: int, packing: bool
) -> tuple[Batch, dict[str, int]]:
    """Rows of conversation indices -> (x, y, doc_starts) of T = width - 1, and the counts."""
    B = len(rows)
    tokens = np.full((B, width), pad_id, dtype=np.int64)  # (B, T+1)
    target = np.zeros((B, width), dtype=bool)  # token is a supervised target
    real = np.zeros((B, width), dtype=bool)
    starts = np.zeros((B, width), dtype=bool)
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            n = min(len(examples.ids[i]), width)
            tokens[r, col : col + n] = examples.ids[i][:n]
            target[r, col + 1 : col + n] = examples.mask[i][1:n]  # never across a start
            real[r, col : col + n] = True
            starts[r, col] = True
            col += n
        if col < width:
            starts[r, col] = True  # the padding is a document of its own
    w = torch.from_numpy(tokens)
    x = w[:, :-1]  # (B, T)
    y = torch.where(torch.from_numpy(target[:, 1:]), w[:, 1:], IGNORE)  # (B, T)
    doc_starts = torch.from_numpy(starts[:, :-1]) if packing else None  # (B, T)
    counts = {
        "rows": B,
        "conversations": sum(len(row) for row in rows),
        "tokens": int(real[:, :-1].sum()),
        "padding_tokens": int((~real[:, :-1]).sum()),
        "supervised_targets": int(target[:, 1:].sum()),
    }
    return (x, y, doc_starts), counts


def _width(examples: ChatExamples, rows: Sequence[Sequence[int]], seq_len: int, packing: bool):
    """T + 1 of a batch: seq_len + 1 packed; the longest conversation + 0 padded."""
    if packing:
        return seq_len + 1
    return min(seq_len + 1, max(len(examples.ids[row[0]]) for row in rows))


class ChatLoader:
    """Training batches of conversations, packed or padded (module doc); y = -1 where the
    target is not supervised. Deterministic for a seed, resumable on any number of ranks."""

    world_size_independent = True  # the state is a global row count

    def __init__(
        self,
        examples: ChatExamples,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        packing: bool = True,
        pad_id: int = 0,
        buffer_size: int = 256,
    ) -> None:
        if len(examples) == 0:
            raise GptlabError("no training conversations to batch; give more conversation data")
        self.examples, self.seed = examples, seed
        self.rank, self.world_size = rank, world_size
        self.packing, self.pad_id, self.buffer_size = packing, pad_id, buffer_size
        self.batch_size, self.seq_len = batch_size, seq_len
        self.consumed = 0  # rows drawn so far by all ranks together
        self.epoch, self.epoch_start = 0, 0  # the epoch holding row `consumed`, its first row
        self.counts = dict.fromkeys(
            ("rows", "conversations", "tokens", "padding_tokens", "supervised_targets"), 0
        )
        self._epochs: dict[int, list] = {}  # packed rows of recent epochs

    def set_shape(self, batch_size: int, seq_len: int) -> None:
        """Draw (batch_size, seq_len) batches from now on (staged training). Packed rows of a
        new length start a new epoch at the current position; a conversation longer than
        seq_len + 1 is cropped to it."""
        if self.packing and seq_len != self.seq_len:
            self.epoch, self.epoch_start = self.epoch + 1, self.consumed
            self._epochs = {}
        self.batch_size, self.seq_len = batch_size, seq_len

    def _rows_of(self, epoch: int) -> list:
        if epoch not in self._epochs:
            n = len(self.examples)
            order = np.random.default_rng([self.seed, epoch]).permutation(n)  # (N,)
            if self.packing:
                lengths = np.minimum(self.examples.lengths(), self.seq_len + 1)
                self._epochs[epoch] = pack_rows(lengths, order, self.seq_len + 1, self.buffer_size)
            else:
                self._epochs[epoch] = [[int(i)] for i in order]
        return self._epochs[epoch]

    def _rows(self, first: int, count: int) -> list:
        """Rows first .. first + count - 1 of the stream (first >= the current epoch's start)."""
        out, epoch, start = [], self.epoch, self.epoch_start
        for k in range(first, first + count):
            while k >= start + len(self._rows_of(epoch)):
                start, epoch = start + len(self._rows_of(epoch)), epoch + 1
            out.append(self._rows_of(epoch)[k - start])
        return out

    def next_batch(self) -> Batch:
        B = self.batch_size
        rows = self._rows(self.consumed + self.rank * B, B)
        self.consumed += self.world_size * B
        while self.consumed >= self.epoch_start + len(self._rows_of(self.epoch)):
            self.epoch_start += len(self._rows_of(self.epoch))
            self.epoch += 1
        self._epochs = {e: r for e, r in self._epochs.items() if e >= self.epoch}
        width = _width(self.examples, rows, self.seq_len, self.packing)
        batch, counts = _assemble(self.examples, rows, width, self.pad_id, self.packing)
        for k, v in counts.items():
            self.counts[k] += v
        return batch

    def stats(self) -> dict[str, int]:
        """What this rank's batches held so far: rows, conversations, real and padding tokens
        of x, and supervised targets of y."""
        return dict(self.counts)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,  # packed rows depend on it
            "consumed": self.consumed,
            "epoch": self.epoch,
            "epoch_start": self.epoch_start,
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.consumed = state["seed"], state["consumed"]
        self.batch_size, self.seq_len = state["batch_size"], state["seq_len"]
        self.epoch, self.epoch_start = state["epoch"], state["epoch_start"]
        self.counts = dict(state["counts"])
        self._epochs = {}


def fixed_chat_batches(
    examples: ChatExamples,
    batch_size: int,
    seq_len: int,
    packing: bool,
    max_batches: int,
    pad_id: int = 0,
) -> list[Batch]:
    """Evaluation batches: every conversation once, in a fixed order (packed best fit over
    all of them, or one per row in data order), up to `max_batches` (0: all); the last batch
    may have fewer rows."""
    lengths = np.minimum(examples.lengths(), seq_len + 1)
    order = np.arange(len(examples))
    if packing:
        rows = pack_rows(lengths, order, seq_len + 1, buffer_size=len(examples) or 1)
    else:
        rows = [[int(i)] for i in order]
    groups = [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    if max_batches > 0:
        groups = groups[:max_batches]
    return [
        _assemble(examples, g, _width(examples, g, seq_len, packing), pad_id, packing)[0]
        for g in groups
    ]
