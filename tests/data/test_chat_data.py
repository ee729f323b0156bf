"""Conversation data: reading every schema (and every bad input), tokenizing with truncation,
the val split, packed and padded batches, determinism, resume, ranks, and document masking."""

from __future__ import annotations

import json
import string
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import SHARED

from gptlab.data.chat import (
    IGNORE,
    ChatExamples,
    ChatLoader,
    fixed_chat_batches,
    pack_rows,
    split_examples,
    tokenize_conversations,
)
from gptlab.data.conversations import read_conversations
from gptlab.errors import GptlabError
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.chat import Message, chat_template

CHAT_SFT = Path(SHARED) / "chat_sft" if SHARED else None
needs_chat_sft = pytest.mark.skipif(
    CHAT_SFT is None or not CHAT_SFT.is_dir(), reason="set GPTLAB_DATA_DIR to the shared data"
)
U, A, S = "user", "assistant", "system"


def write(tmp_path: Path, name: str, rows, jsonl: bool | None = None) -> str:
    path = tmp_path / name
    if jsonl if jsonl is not None else name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return str(path)


def pairs(conversation: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conversation]


def one_line_error(paths, match: str, **kw) -> str:
    with pytest.raises((GptlabError, ValueError), match=match) as info:
        read_conversations(paths, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- reading: the three shared files ------------------------------------------------------


@needs_chat_sft
def test_sharegpt_file():
    convs, stats = read_conversations([str(CHAT_SFT / "fastchat_dummy_conversation.json")])
    raw = json.loads((CHAT_SFT / "fastchat_dummy_conversation.json").read_text())
    assert stats == {"rows": 500, "conversations": 500, "skipped_no_assistant": 0}
    assert sum(len(c) for c in convs) == 2000
    for conv, row in zip(convs, raw, strict=True):
        assert [m.role for m in conv] == [U, A] * (len(conv) // 2)
        assert [m.content for m in conv] == [t["value"] for t in row["conversations"]]


@pytest.mark.parametrize(
    ("name", "n"),
    [
        ("self_instruct_seed_tasks.jsonl", 175),
        ("self_instruct_user_oriented_instructions.jsonl", 252),
    ],
)
@needs_chat_sft
def test_self_instruct_files(name, n):
    convs, stats = read_conversations([str(CHAT_SFT / name)])
    assert stats == {"rows": n, "conversations": n, "skipped_no_assistant": 0}
    rows = [json.loads(line) for line in (CHAT_SFT / name).read_text().splitlines()]
    for conv, row in zip(convs, rows, strict=True):
        inst = row["instances"][0]
        user = row["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
        assert pairs(conv) == [(U, user), (A, inst["output"])]


@needs_chat_sft
def test_several_files_and_limit():
    paths = [str(CHAT_SFT / f) for f in sorted(p.name for p in CHAT_SFT.glob("*.json*"))]
    convs, stats = read_conversations(paths)
    assert stats["conversations"] == len(convs) == 500 + 175 + 252
    some, stats = read_conversations(paths, limit=510)
    assert len(some) == 510 and stats["conversations"] == 510 and stats["rows"] == 510
    assert some == convs[:510]


# -- reading: hand-made files -------------------------------------------------------------


def test_openai_messages_jsonl_with_system(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
    ]
    convs, stats = read_conversations([write(tmp_path, "a.jsonl", rows)])
    assert pairs(convs[0]) == [(S, "Be brief."), (U, "Hi"), (A, "Hello")]
    assert pairs(convs[1]) == [(U, "x"), (A, "")]  # an empty reply is still a reply
    assert stats == {"rows": 2, "conversations": 2, "skipped_no_assistant": 0}


def test_sharegpt_role_names_and_top_level_system(tmp_path):
    turns = [("human", "a"), ("chatgpt", "b"), ("user", "c"), ("bard", "d"), ("User", "e")]
    turns += [("model", "f"), ("system", "g"), ("gpt", "h"), ("assistant", "i")]
    row = {"system": "sys", "conversations": [{"from": f, "value": v} for f, v in turns]}
    (conv,), _ = read_conversations([write(tmp_path, "s.json", [row])])
    assert pairs(conv) == [(S, "sys"), (U, "a"), (A, "b"), (U, "c"), (A, "d"), (U, "e")] + [
        (A, "f"),
        (S, "g"),
        (A, "h"),
        (A, "i"),
    ]


def test_alpaca_rows_and_object_with_one_list(tmp_path):
    rows = [
        {"instruction": "Add", "input": "1 2", "output": "3"},
        {"instruction": "Greet", "input": "", "output": "Hi"},
        {"instruction": "Wave", "output": "o/"},
    ]
    convs, _ = read_conversations([write(tmp_path, "a.json", {"train": rows, "note": "x"})])
    assert [pairs(c) for c in convs] == [
        [(U, "Add\n\n1 2"), (A, "3")],
        [(U, "Greet"), (A, "Hi")],
        [(U, "Wave"), (A, "o/")],
    ]


def test_self_instruct_row_with_several_instances(tmp_path):
    row = {"instruction": "Sort", "instances": [{"input": "b a", "output": "a b"}, {"output": "-"}]}
    convs, stats = read_conversations([write(tmp_path, "t.jsonl", [row])])
    assert [pairs(c) for c in convs] == [[(U, "Sort\n\nb a"), (A, "a b")], [(U, "Sort"), (A, "-")]]
    assert stats == {"rows": 1, "conversations": 2, "skipped_no_assistant": 0}


def test_json_lines_in_a_json_file_and_a_single_object(tmp_path):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    lines = write(tmp_path, "lines.json", [row, row], jsonl=True)
    assert len(read_conversations([lines])[0]) == 2
    single = write(tmp_path, "one.json", row)
    assert pairs(read_conversations([single])[0][0]) == [(U, "q"), (A, "a")]


def test_jsonl_line_separator_inside_a_string(tmp_path):
    row = {"instruction": "a\u2028b", "output": "c\u2029d"}
    path = tmp_path / "sep.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (c,), _ = read_conversations([str(path)])
    assert pairs(c) == [(U, "a\u2028b"), (A, "c\u2029d")]


def test_conversation_without_reply_is_skipped_and_counted(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q"}]},
        {"messages": []},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    convs, stats = read_conversations([write(tmp_path, "x.jsonl", rows)])
    assert len(convs) == 1
    assert stats == {"rows": 3, "conversations": 1, "skipped_no_assistant": 2}


# -- reading: bad input, one clear line each ----------------------------------------------


def test_missing_file(tmp_path):
    msg = one_line_error([str(tmp_path / "nope.jsonl")], "does not exist")
    assert "nope.jsonl" in msg and "JSONL" in msg


def test_invalid_json_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": oops}\n')
    one_line_error([str(bad)], r"bad\.jsonl line 3: invalid JSON")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"instruction": "a",\n   "output": }\n]')
    one_line_error([str(broken)], r"broken\.json line 3: invalid JSON")


def test_unknown_schema_lists_keys_and_schemas(tmp_path):
    path = write(tmp_path, "u.jsonl", [{"instruction": "a", "output": "b"}, {"text": "x", "id": 1}])
    msg = one_line_error([path], r"u\.jsonl line 2: no known conversation schema")
    assert "text, id" in msg and "messages (role/content)" in msg and "from/value" in msg
    listed = write(tmp_path, "l.json", [["not", "an", "object"]])
    one_line_error([listed], r"l\.json row 1: no known conversation schema \(has list\)")


def test_unknown_role_names_it_and_the_accepted_ones(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "{}"}]}]
    msg = one_line_error([write(tmp_path, "r.json", rows)], r"r\.json row 1: unknown role 'tool'")
    assert "user" in msg and "assistant" in msg and "gpt" in msg


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]},
        {"conversations": [{"from": "human", "value": None}]},
        {"instruction": "a", "output": 3},
        {"instruction": "a", "instances": [{"input": 1, "output": "b"}]},
    ],
)
def test_non_string_content(tmp_path, row):
    one_line_error([write(tmp_path, "c.jsonl", [row])], r"c\.jsonl line 1.*must be a string")


def test_hf_needs_the_network_when_offline():
    msg = one_line_error(["hf:someone/chat"], "hf:someone/chat needs the network")
    assert "local JSON/JSONL" in msg


def test_hf_rows_go_through_the_same_schemas(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"messages": [{"role": "user", "content": "q"}, {"role": "gpt", "content": "a"}]}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    convs, stats = read_conversations(["hf:org/set:train_sft"], allow_download=True)
    assert calls == [("org/set", "train_sft")] and pairs(convs[0]) == [(U, "q"), (A, "a")]
    read_conversations(["hf:org/set"], allow_download=True)
    assert calls[-1] == ("org/set", "train")


# -- tokenizing ---------------------------------------------------------------------------


@pytest.fixture
def template():
    return chat_template(CharTokenizer(sorted(set(string.printable))), "plain")


def conv(*turns: str) -> list[Message]:
    return [Message(U if i % 2 == 0 else A, t) for i, t in enumerate(turns)]


def test_tokenize_keeps_ids_and_mask(template):
    c = conv("hi", "hello")
    ex = tokenize_conversations([c], template, 100)
    r = template.render(c)
    assert ex.ids[0].dtype == np.int32 and ex.mask[0].dtype == np.bool_
    assert ex.ids[0].tolist() == r.ids and ex.mask[0].tolist() == [bool(m) for m in r.mask]
    assert ex.stats["examples"] == 1 and ex.stats["truncated_at_turn"] == 0
    assert ex.stats["supervised_tokens"] == sum(r.mask)


def test_truncation_at_a_turn_boundary(template):
    c = conv("q1", "a1", "q2", "a2 " * 20)
    r = template.render(c)
    budget = r.turn_ends[2] + 5  # the first exchange and q2 fit, a2 does not
    ex = tokenize_conversations([c], template, budget)
    assert ex.ids[0].tolist() == r.ids[: r.turn_ends[1]]
    assert ex.ids[0].tolist() == template.render(c[:2]).ids
    assert ex.stats["truncated_at_turn"] == 1 and ex.stats["truncated_mid_turn"] == 0


def test_truncation_mid_turn_when_no_boundary_fits(template):
    c = conv("q", "a long reply " * 10)
    r = template.render(c)
    ex = tokenize_conversations([c], template, 20)
    assert ex.ids[0].tolist() == r.ids[:20] and ex.mask[0][1:].any()
    assert ex.stats["truncated_mid_turn"] == 1 and ex.stats["truncated_at_turn"] == 0


def test_no_supervised_token_left_is_skipped_and_counted(template):
    convs = [conv("a very long question " * 5, "a"), conv("q", "a")]
    ex = tokenize_conversations(convs, template, 30)
    assert len(ex) == 1 and ex.ids[0].tolist() == template.render(convs[1]).ids
    assert ex.stats["skipped_no_target"] == 1 and ex.stats["truncated_mid_turn"] == 0
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_conversations(convs, template, 1)


@needs_chat_sft
def test_real_files_tokenize_within_the_context(template):
    convs, _ = read_conversations([str(CHAT_SFT / "fastchat_dummy_conversation.json")])
    ex = tokenize_conversations(convs, template, 129)
    assert all(len(a) <= 129 and m[1:].any() for a, m in zip(ex.ids, ex.mask, strict=True))
    assert ex.stats["truncated_at_turn"] > 0  # multi-turn rows lose their last exchanges
    n = ex.stats["examples"] + ex.stats["skipped_no_target"]
    assert n == len(convs)


# -- split --------------------------------------------------------------------------------


def synthetic(n: int = 30, seed: int = 0, max_len: int = 20) -> ChatExamples:
    """Example i: [BOS=1, role=2, v, v, ..., end=3] with v = 10 + i, a random supervised run
    (at least one target) and the end token supervised."""
    rng = np.random.default_rng(seed)
    ids, mask = [], []
    for i in range(n):
        length = int(rng.integers(4, max_len + 1))
        a = np.array([1, 2] + [10 + i] * (length - 3) + [3], dtype=np.int32)
        m = np.zeros(length, dtype=bool)
        m[int(rng.integers(2, length)) :] = True
        ids.append(a)
        mask.append(m)
    return ChatExamples(ids, mask, {})


def test_split_is_fixed_disjoint_and_never_empty():
    ex = synthetic(40)
    train, val = split_examples(ex, 0.1)
    train2, val2 = split_examples(ex, 0.1)
    key = {a.tobytes(): i for i, a in enumerate(ex.ids)}
    t = {key[a.tobytes()] for a in train.ids}
    v = {key[a.tobytes()] for a in val.ids}
    assert len(v) == 4 and not t & v and t | v == set(range(40))
    assert [a.tolist() for a in val2.ids] == [a.tolist() for a in val.ids]
    assert val.stats["examples"] == 4 and train.stats["tokens"] == sum(map(len, train.ids))
    tiny_train, tiny_val = split_examples(synthetic(2), 0.01)
    assert len(tiny_train) == len(tiny_val) == 1
    assert len(split_examples(synthetic(3), 0.99)[0]) == 1
    with pytest.raises(GptlabError, match="at least 2 conversations") as info:
        split_examples(synthetic(1), 0.5)
    assert "\n" not in str(info.value)


# -- batching -----------------------------------------------------------------------------


def take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def same(a, b):
    for (x1, y1, s1), (x2, y2, s2) in zip(a, b, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert (s1 is None and s2 is None) or torch.equal(s1, s2)


def segments(starts_row: torch.Tensor) -> list[tuple[int, int]]:
    cols = torch.nonzero(starts_row).flatten().tolist() + [len(starts_row)]
    return list(zip(cols[:-1], cols[1:], strict=True))


def check_packed(ex: ChatExamples, batch, T: int, pad_id: int) -> list[int]:
    """Every row: whole conversations back to back, then padding; y exact. Returns the
    example index of each conversation seen."""
    x, y, starts = batch
    assert x.shape == y.shape == starts.shape and x.shape[1] == T
    assert x.dtype == y.dtype == torch.int64 and starts.dtype == torch.bool
    seen = []
    for r in range(x.shape[0]):
        assert starts[r, 0]
        segs = segments(starts[r])
        for k, (a, b) in enumerate(segs):
            if x[r, a] == pad_id:  # the padding: last, masked, never a conversation
                assert k == len(segs) - 1 and (x[r, a:] == pad_id).all()
                assert (y[r, a:] == IGNORE).all()
                continue
            i = int(x[r, a + 2]) - 10
            ids, mask = ex.ids[i], ex.mask[i]
            n = len(ids)
            ends_row = b == T and (k == len(segs) - 1)
            assert b - a == n or (ends_row and b - a == n - 1), "a conversation was cut"
            assert x[r, a:b].tolist() == ids[: b - a].tolist()
            want = [int(ids[t + 1]) if t + 1 < n and mask[t + 1] else IGNORE for t in range(b - a)]
            assert y[r, a:b].tolist() == want
            seen.append(i)
    return seen


@pytest.mark.parametrize("pad_id", [0, 7])
def test_packing_fills_rows_with_whole_conversations(pad_id):
    ex = synthetic(40, max_len=12)
    loader = ChatLoader(ex, 4, 24, seed=1, pad_id=pad_id)
    batches, seen = take(loader, 12), []
    for batch in batches:
        seen += check_packed(ex, batch, 24, pad_id)
    assert set(seen) == set(range(40))  # the stream goes through every conversation
    stats = loader.stats()
    assert stats["tokens"] + stats["padding_tokens"] == 12 * 4 * 24
    assert stats["padding_tokens"] < 0.2 * stats["tokens"]  # best fit leaves little room
    assert stats["conversations"] == len(seen) and stats["rows"] == 12 * 4
    assert stats["supervised_targets"] == sum(int((y != IGNORE).sum()) for _, y, _ in batches)


def test_a_conversation_of_exactly_one_row():
    ex = ChatExamples([np.array([1, 2, 10, 11, 3])], [np.array([0, 0, 1, 1, 1], bool)], {})
    x, y, starts = ChatLoader(ex, 2, 4, seed=0).next_batch()
    assert x.tolist() == [[1, 2, 10, 11]] * 2 and y.tolist() == [[IGNORE, 10, 11, 3]] * 2
    assert starts.tolist() == [[True, False, False, False]] * 2


def test_pack_rows_best_fit():
    lengths = np.array([5, 3, 4, 2, 6])
    rows = pack_rows(lengths, np.arange(5), row_len=8, buffer_size=5)
    assert rows == [[4, 3], [0, 1], [2]]  # longest first, then the longest that still fits
    assert pack_rows(lengths, np.arange(5), 8, buffer_size=1) == [[0, 1], [2, 3], [4]]  # in order
    with pytest.raises(ValueError, match="longer than a row"):
        pack_rows(lengths, np.arange(5), 5, buffer_size=2)


def test_padding_mode_one_conversation_per_row():
    ex = synthetic(20)
    loader = ChatLoader(ex, 4, 32, seed=2, packing=False, pad_id=0)
    for x, y, starts in take(loader, 10):
        assert starts is None and x.shape == y.shape and x.dtype == torch.int64
        lengths = [len(ex.ids[int(row[2]) - 10]) for row in x]
        assert x.shape[1] == max(lengths) - 1 <= 32
        for r, n in enumerate(lengths):
            i = int(x[r, 2]) - 10
            assert x[r, :n].tolist() == ex.ids[i][: x.shape[1]].tolist()  # then padding
            assert (x[r, n:] == 0).all()
            want = np.where(ex.mask[i][1:], ex.ids[i][1:], IGNORE).tolist()
            assert y[r, : n - 1].tolist() == want and (y[r, n - 1 :] == IGNORE).all()
    stats = loader.stats()
    assert stats["rows"] == stats["conversations"] == 40 and stats["padding_tokens"] > 0


@pytest.mark.parametrize("packing", [True, False])
def test_deterministic_for_a_seed(packing):
    ex = synthetic()
    a = take(ChatLoader(ex, 4, 24, seed=5, packing=packing), 6)
    same(a, take(ChatLoader(ex, 4, 24, seed=5, packing=packing), 6))
    b = take(ChatLoader(ex, 4, 24, seed=6, packing=packing), 6)
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=False))


@pytest.mark.parametrize("packing", [True, False])
def test_resume_mid_stream_is_exact(packing):
    ex = synthetic(12)  # a few rows per epoch: the stream crosses epochs
    a = ChatLoader(ex, 3, 24, seed=4, packing=packing)
    take(a, 5)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint keeps
    expected, stats = take(a, 7), a.stats()
    b = ChatLoader(ex, 3, 24, seed=99, packing=packing)
    b.load_state_dict(state)
    same(expected, take(b, 7))
    assert b.stats() == stats


@pytest.mark.parametrize("packing", [True, False])
def test_ranks_split_the_single_rank_stream(packing):
    ex, W, A = synthetic(15), 3, 4
    single = take(ChatLoader(ex, 2, 20, seed=3, packing=packing), W * A)
    for r in range(W):
        mine = take(ChatLoader(ex, 2, 20, seed=3, rank=r, world_size=W, packing=packing), A)
        same(mine, single[r::W])
    # resumed on another number of ranks, the stream continues where all ranks were
    ranked = ChatLoader(ex, 2, 20, seed=3, rank=0, world_size=2, packing=packing)
    take(ranked, 3)
    alone = ChatLoader(ex, 2, 20, seed=0, packing=packing)
    alone.load_state_dict(ranked.state_dict())
    same(take(alone, 4), take(ChatLoader(ex, 2, 20, seed=3, packing=packing), 10)[6:])


def test_set_shape_repacks_and_resumes():
    ex = synthetic(20, max_len=16)
    a = ChatLoader(ex, 2, 24, seed=1)
    take(a, 3)
    a.set_shape(3, 12)  # shorter rows: longer conversations are cropped to 13 tokens
    x, y, starts = a.next_batch()
    assert x.shape == (3, 12) and starts[:, 0].all()
    state = a.state_dict()
    b = ChatLoader(ex, 2, 24, seed=1)
    b.load_state_dict(state)
    assert (b.batch_size, b.seq_len) == (3, 12)
    same(take(a, 4), take(b, 4))


@pytest.mark.parametrize("packing", [True, False])
def test_fixed_batches_hold_every_conversation_once(packing):
    ex = synthetic(25)
    batches = fixed_chat_batches(ex, 4, 24, packing, 0)
    seen = []
    for x, y, starts in batches:
        if packing:
            seen += check_packed(ex, (x, y, starts), 24, 0)
        else:
            assert starts is None
            seen += [int(row[2]) - 10 for row in x]
    assert sorted(seen) == list(range(25))
    same(batches, fixed_chat_batches(ex, 4, 24, packing, 0))
    assert len(fixed_chat_batches(ex, 4, 24, packing, 2)) == 2


def test_packed_conversations_never_see_each_other():
    """A change to one conversation of a packed row leaves every other conversation's logits
    (in that row and the others) and the padding's unchanged."""
    ex = synthetic(30, max_len=10)
    x, _, starts = ChatLoader(ex, 2, 32, seed=0).next_batch()
    segs = segments(starts[0])
    assert len(segs) >= 3
    model = GPT(
        ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=32, vocab_size=64, doc_mask=True)
    )
    model.eval()
    x = x.clamp(max=63)  # token values 10 + i, inside the small vocabulary
    with torch.no_grad():
        before = model(x, doc_starts=starts)  # (B, T, V)
        for a, b in segs[:2]:  # the first conversation, then one with another before it
            changed = x.clone()
            changed[0, a + 1 : b] = (changed[0, a + 1 : b] + 7) % 64
            after = model(changed, doc_starts=starts)
            inside = torch.zeros_like(starts)
            inside[0, a:b] = True
            assert torch.allclose(after[~inside], before[~inside], atol=1e-6)
            assert not torch.allclose(after[inside], before[inside])
