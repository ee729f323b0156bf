"""Byte-level BPE in plain Python, written to be read: the trainer and the rank-based encoder.

It is also the oracle our tests hold the fast path to (Hugging Face `tokenizers` trains, tiktoken
encodes, see fast.py), so both halves copy the fast tools' exact rules:

- Training works on unique regex chunks ("words") with their counts, never on the running text:
  a 1 MB corpus has ~200k chunks but only ~20k distinct ones.
- Pair counts are updated incrementally. After merging (a, b), only words that contained it
  change: we subtract their pair counts, merge, and add them back. A pair -> words index finds
  those words, and a max-heap with lazy invalidation finds the next best pair, so each merge
  costs about the length of the words it touches instead of a recount of everything.
- Ties: among equally frequent pairs the one whose tokens are older wins (left token first, then
  right). Merged tokens are ordered by creation; the 256 byte tokens come before them, ordered by
  GPT-2's printable byte alphabet (see byte_map.py). Hugging Face breaks ties the same way, so the
  two trainers learn the same merges.
- Encoding a chunk repeatedly merges the adjacent pair whose concatenation has the lowest rank,
  leftmost first, exactly like tiktoken (a chunk that is itself a token is emitted at once).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import pairwise

import regex

from gptlab.tokenizer.byte_map import byte_alphabet_order

Pair = tuple[int, int]


def count_words(texts: Iterable[str], pattern: str) -> Counter[bytes]:
    """Split each text with the pattern and count each distinct chunk's UTF-8 bytes."""
    split = regex.compile(pattern)
    chunks: Counter[str] = Counter()
    for text in texts:
        chunks.update(split.findall(text))
    return Counter({chunk.encode("utf-8"): n for chunk, n in chunks.items()})


def count_pairs(words: Iterable[list[int]], counts: Iterable[int]) -> Counter[Pair]:
    """Adjacent-pair counts over all words, each weighted by its count (the brute-force way)."""
    pairs: Counter[Pair] = Counter()
    for ids, n in zip(words, counts, strict=True):
        for pair in pairwise(ids):
            pairs[pair] += n
    return pairs


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right, by `new_id`."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETrainer:
    """Learns merges one `step()` at a time from word counts; `vocab[id]` is each token's bytes.

    Ids 0..255 are the raw bytes (id = byte value) and merge i creates id 256 + i. A merge whose
    bytes already exist as a token (it can happen: 'ab'+'c' and 'a'+'bc') reuses that token's id
    and adds nothing to the vocabulary, as in Hugging Face's trainer.
    """

    def __init__(self, word_counts: Mapping[bytes, int]) -> None:
        self.vocab: list[bytes] = [bytes([b]) for b in range(256)]
        self.ids_of: dict[bytes, int] = {t: i for i, t in enumerate(self.vocab)}
        self.words: list[list[int]] = [list(w) for w in word_counts]
        self.counts: list[int] = list(word_counts.values())
        self.merges: list[tuple[Pair, int]] = []  # (pair, id it became), in order
        self.pair_counts: dict[Pair, int] = dict(count_pairs(self.words, self.counts))
        self.words_with: dict[Pair, set[int]] = {}  # may also list words that lost the pair
        for i, ids in enumerate(self.words):
            for pair in pairwise(ids):
                self.words_with.setdefault(pair, set()).add(i)
        self._byte_order = byte_alphabet_order()
        self._heap = [self._entry(p, n) for p, n in self.pair_counts.items()]
        heapq.heapify(self._heap)

    def _age(self, token: int) -> int:
        return self._byte_order[token] if token < 256 else token

    def _entry(self, pair: Pair, count: int) -> tuple[int, int, int, Pair]:
        # heapq pops the smallest: highest count first, then the older left and right tokens
        return (-count, self._age(pair[0]), self._age(pair[1]), pair)

    def best_pair(self) -> Pair | None:
        """Pop the most frequent pair (see the tie rule above), or None when none is left."""
        while self._heap:
            neg_count, _, _, pair = heapq.heappop(self._heap)
            current = self.pair_counts.get(pair, 0)
            if current == -neg_count:
                return pair
            if 0 < current < -neg_count:  # stale: the count fell since this entry was pushed
                heapq.heappush(self._heap, self._entry(pair, current))
            # a count that rose has a newer entry in the heap already; drop this one
        return None

    def step(self) -> int | None:
        """Do one merge; returns the id it produced, or None when no pair is left."""
        pair = self.best_pair()
        if pair is None:
            return None
        merged = self.vocab[pair[0]] + self.vocab[pair[1]]
        new_id = self.ids_of.get(merged)
        if new_id is None:
            new_id = len(self.vocab)
            self.vocab.append(merged)
            self.ids_of[merged] = new_id
        self.merges.append((pair, new_id))

        before: dict[Pair, int] = {}  # counts of the pairs this merge touches, before it
        for i in self.words_with.pop(pair):
            ids, n = self.words[i], self.counts[i]
            new_ids = merge_pair(ids, pair, new_id)
            if len(new_ids) == len(ids):  # the index was stale: this word lost the pair earlier
                continue
            for p in pairwise(ids):
                before.setdefault(p, self.pair_counts[p])
                self.pair_counts[p] -= n
            for p in pairwise(new_ids):
                before.setdefault(p, self.pair_counts.get(p, 0))
                self.pair_counts[p] = self.pair_counts.get(p, 0) + n
                self.words_with.setdefault(p, set()).add(i)
            self.words[i] = new_ids
        for p, old in before.items():
            now = self.pair_counts[p]
            if now == 0:
                del self.pair_counts[p]
            elif now > old:  # new or grown: push; shrunk ones are re-pushed lazily when popped
                heapq.heappush(self._heap, self._entry(p, now))
        return new_id

    def ranks(self) -> dict[bytes, int]:
        """Mergeable ranks (token bytes -> id) of everything learned so far."""
        return {token: i for i, token in enumerate(self.vocab)}


def train_ranks(word_counts: Mapping[bytes, int], n_tokens: int) -> dict[bytes, int]:
    """Merge until the vocabulary holds `n_tokens` byte strings (256 bytes + merges) or no pair
    is left; returns the mergeable ranks."""
    trainer = BPETrainer(word_counts)
    while len(trainer.vocab) < n_tokens and trainer.step() is not None:
        pass
    return trainer.ranks()


def encode_chunk(chunk: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Token ids of one pre-tokenised chunk: merge the lowest-rank adjacent pair until none is
    a token. Every single byte must be in `ranks` (true of any byte-level vocabulary)."""
    if chunk in ranks:
        return [ranks[chunk]]
    parts = [chunk[i : i + 1] for i in range(len(chunk))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def scrub_surrogates(text: str) -> str:
    """Lone UTF-16 surrogates cannot be UTF-8 encoded: pair them up or make them U+FFFD, as
    tiktoken does, so both encoders accept the same strings."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class ReferenceEncoder:
    """Text -> ids with a regex split and `encode_chunk`; remembers recent chunks' ids."""

    CACHE_SIZE = 100_000  # distinct chunks kept; cleared when full (English needs ~50k)

    def __init__(self, ranks: Mapping[bytes, int], pattern: str) -> None:
        self.ranks = ranks
        self.split = regex.compile(pattern)
        self._cache: dict[str, list[int]] = {}

    def encode_ordinary(self, text: str) -> list[int]:
        try:
            return self._encode(text)
        except UnicodeEncodeError:
            return self._encode(scrub_surrogates(text))

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in self.split.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = encode_chunk(chunk.encode("utf-8"), self.ranks)
                if len(cache) >= self.CACHE_SIZE:
                    cache.clear()
                cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids
