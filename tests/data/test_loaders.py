"""Loaders: random windows, BOS-aligned packing, sequential streaming; ranks, seeds, resume."""

from itertools import pairwise

import numpy as np
import pytest
import torch

from gptlab.data.loader import (
    PackedLoader,
    RandomWindowLoader,
    SequentialLoader,
    build_loader,
    fixed_batches,
)
from gptlab.data.shards import TokenShards

BOS = 0


def corpus(n_docs=40, seed=0, shards=2, max_len=30) -> TokenShards:
    """Documents [BOS, d, d, ...] of random lengths with a distinct value per document."""
    rng = np.random.default_rng(seed)
    per_shard: list[list[np.ndarray]] = [[] for _ in range(shards)]
    for d in range(n_docs):
        n = int(rng.integers(2, max_len))
        doc = np.array([BOS] + [1 + d % 250] * (n - 1), dtype=np.uint16)
        per_shard[d * shards // n_docs].append(doc)
    arrays, rows = [], []
    for s, docs in enumerate(per_shard):
        starts = np.cumsum([0] + [len(d) for d in docs])
        rows += [[s, a, b] for a, b in pairwise(starts)]
        arrays.append(np.concatenate(docs))
    return TokenShards(arrays, np.array(rows, dtype=np.int64), vocab_size=256, bos_id=BOS)


def take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def same(a, b):
    for (x1, y1, s1), (x2, y2, s2) in zip(a, b, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert (s1 is None and s2 is None) or torch.equal(s1, s2)


def windows_of(data: TokenShards, T: int) -> set[tuple]:
    return {tuple(s[i : i + T + 1].tolist()) for s in data.shards for i in range(len(s) - T)}


@pytest.mark.parametrize("kind", ["random", "packed", "sequential"])
def test_shapes_shift_and_resume(kind):
    data = corpus()
    a = build_loader(kind, data, 4, 16, seed=3, with_doc_starts=True)
    take(a, 2)
    state = a.state_dict()
    expected = take(a, 5)
    b = build_loader(kind, data, 4, 16, seed=99, with_doc_starts=True)
    b.load_state_dict(state)
    same(expected, take(b, 5))
    x, y, starts = expected[0]
    assert x.shape == y.shape == starts.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64 and starts.dtype == torch.bool
    assert torch.equal(x[:, 1:], y[:, :-1])
    c = build_loader(kind, data, 4, 16, seed=3, with_doc_starts=True)
    same(take(c, 7)[2:], expected)  # deterministic for a seed


def test_random_windows_are_real_and_stay_in_their_shard():
    data = corpus()
    legal = windows_of(data, 8)
    for x, y, starts in take(RandomWindowLoader(data, 8, 8, seed=0, with_doc_starts=True), 20):
        for r in range(8):
            assert tuple(torch.cat([x[r], y[r, -1:]]).tolist()) in legal
            assert torch.equal(starts[r], x[r] == BOS)  # BOS exactly at document starts


def test_random_batch_i_is_a_function_of_seed_and_i():
    """Rank r of W takes micro-batches r, r + W, ...: 2 ranks x 1 equals 1 rank x 2."""
    data = corpus()
    one = take(RandomWindowLoader(data, 4, 16, seed=7), 6)
    r0 = take(RandomWindowLoader(data, 4, 16, seed=7, rank=0, world_size=2), 3)
    r1 = take(RandomWindowLoader(data, 4, 16, seed=7, rank=1, world_size=2), 3)
    same(one[0::2], r0)
    same(one[1::2], r1)
    other_seed = RandomWindowLoader(data, 4, 16, seed=8).next_batch()[0]
    assert not torch.equal(other_seed, one[0][0])


@pytest.mark.parametrize("kind", ["random", "sequential"])
def test_resume_on_another_world_size_continues_the_stream(kind):
    """A state saved by 2 ranks, loaded by 1 (or 4), gives the batches 1 rank would have seen."""
    data = TokenShards.from_array(np.arange(3000, dtype=np.uint16) % 1000, vocab_size=1000)
    single = build_loader(kind, data, 2, 8, seed=1)
    stream = take(single, 12)
    pair = [build_loader(kind, data, 2, 8, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(2):  # two steps of 2 ranks = micro-batches 0..3
        for loader in pair:
            loader.next_batch()
    assert pair[0].state_dict() == pair[1].state_dict()  # the same on every rank
    solo = build_loader(kind, data, 2, 8, seed=1)
    solo.load_state_dict(pair[0].state_dict())
    same(take(solo, 4), stream[4:8])
    quad = [build_loader(kind, data, 2, 8, seed=1, rank=r, world_size=4) for r in range(4)]
    for loader in quad:
        loader.load_state_dict(pair[0].state_dict())
    same([loader.next_batch() for loader in quad], stream[4:8])


@pytest.mark.parametrize("kind", ["random", "packed", "sequential"])
def test_set_shape_changes_batch_and_context(kind):
    data = corpus(n_docs=80)
    loader = build_loader(kind, data, 4, 16, seed=0, with_doc_starts=True)
    take(loader, 3)
    loader.set_shape(2, 8)
    x, y, starts = loader.next_batch()
    assert x.shape == y.shape == starts.shape == (2, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])
    loader.set_shape(3, 24)
    state = loader.state_dict()
    expected = take(loader, 3)
    assert expected[0][0].shape == (3, 24)
    again = build_loader(kind, data, 3, 24, seed=0, with_doc_starts=True)
    again.load_state_dict(state)
    same(take(again, 3), expected)


def test_packed_rows_are_bos_aligned_whole_documents():
    data = corpus(n_docs=60, max_len=12)
    docs = {tuple(data.shards[s][a:b].tolist()) for s, a, b in data.docs}
    loader = PackedLoader(data, 4, 31, seed=0)
    for x, y, starts in take(loader, 10):
        rows = torch.cat([x, y[:, -1:]], dim=1)  # (B, T+1)
        for r in range(4):
            row = rows[r].tolist()
            assert row[0] == BOS  # every row starts a document
            cut = [i for i, v in enumerate(row) if v == BOS] + [len(row)]
            pieces = [tuple(row[a:b]) for a, b in pairwise(cut)]
            for p in pieces[:-1]:  # whole documents; only the last may be cropped
                assert p in docs
            assert any(d[: len(pieces[-1])] == pieces[-1] for d in docs)
            assert torch.equal(starts[r], x[r] == BOS)


def test_packed_long_documents_give_whole_rows():
    doc = np.array([BOS] + [7] * 99, dtype=np.uint16)
    data = TokenShards([doc], np.array([[0, 0, 100]]), vocab_size=10, bos_id=BOS)
    x, y, starts = PackedLoader(data, 3, 19, seed=0).next_batch()  # rows of 20 tokens
    assert x[0, 0] == BOS and (x[1] == 7).all() and (x[2] == 7).all()
    assert starts[:, 0].all()  # each row begins a segment for the model's positions


def test_packed_ranks_take_disjoint_documents():
    data = corpus(n_docs=40)
    seen = []
    for rank in (0, 1):
        loader = PackedLoader(data, 2, 15, seed=0, rank=rank, world_size=2)
        ids = {v for x, _, _ in take(loader, 20) for v in x.flatten().tolist() if v != BOS}
        seen.append(ids)
    assert seen[0] and seen[1] and not (seen[0] & seen[1])


def test_packed_refuses_more_ranks_than_documents():
    with pytest.raises(ValueError, match="cannot be shared by 50 ranks"):
        PackedLoader(corpus(n_docs=2, shards=1), 2, 8, 0, rank=10, world_size=50)


def test_sequential_covers_the_stream_in_order_and_ranks_interleave():
    tokens = np.arange(1000, dtype=np.uint16)
    data = TokenShards.from_array(tokens, vocab_size=1000)
    one = take(SequentialLoader(data, 2, 10), 3)
    assert one[0][0][0].tolist() == list(range(10)) and one[0][0][1].tolist() == list(range(10, 20))
    assert one[1][0][0, 0] == 20
    r0 = take(SequentialLoader(data, 1, 10, rank=0, world_size=2), 3)
    r1 = take(SequentialLoader(data, 1, 10, rank=1, world_size=2), 3)
    assert torch.equal(r0[0][0], one[0][0][:1]) and torch.equal(r1[0][0], one[0][0][1:])
    assert torch.equal(r0[2][0], one[2][0][:1]) and torch.equal(r1[2][0], one[2][0][1:])


def test_sequential_wraps_to_the_next_epoch():
    data = TokenShards.from_array(np.arange(100, dtype=np.uint16), vocab_size=100)
    loader = SequentialLoader(data, 2, 20)
    xs = [loader.next_batch()[0] for _ in range(3)]
    assert xs[0][0, 0] == 0 and xs[1][0, 0] == 40 and xs[2][0, 0] == 0  # 100 < 3 * 40 + 1
    assert loader.epoch == 1


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="no shard holds one training window"):
        RandomWindowLoader(TokenShards.from_array(np.zeros(10, np.uint16), 1), 2, 16, seed=0)
    with pytest.raises(ValueError, match="no shard holds one block"):
        SequentialLoader(TokenShards.from_array(np.zeros(10, np.uint16), 1), 2, 16)


def test_fixed_batches_repeat():
    data = corpus()
    f1, f2 = fixed_batches(data, 2, 2, 8, seed=5), fixed_batches(data, 2, 2, 8, seed=5)
    same(f1, f2)
