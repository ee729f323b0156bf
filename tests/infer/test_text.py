"""TextStream: released pieces add up to the text, stop strings are cut cleanly, and a UTF-8
character split across byte-level tokens is never released half-decoded (U+FFFD)."""

from __future__ import annotations

import pytest

from gptlab.infer.text import REPLACEMENT, TextStream
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.train import train_bpe_tokenizer

CHARS = "abcdefghijklmnopqrstuvwxyz .,!\n"


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return CharTokenizer.train(CHARS)


@pytest.fixture(scope="module")
def bpe_tok():
    """A small byte-level BPE trained on ASCII only: every non-ASCII character stays split
    into its single-byte tokens."""
    return train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog. " * 50], 280, "gpt4")


def run(tok, text: str, stop=()) -> tuple[list[str], str, TextStream]:
    """Push text's ids one at a time; (pieces of every push, finish(), the stream)."""
    stream = TextStream(tok, tuple(stop))
    pieces = []
    for i in tok.encode(text):
        pieces.append(stream.push(i))
        if stream.stopped:
            break
    return pieces, stream.finish(), stream


def test_pieces_concatenate_to_text(char_tok):
    text = "hello world, this is a test!\n"
    pieces, rest, stream = run(char_tok, text)
    assert rest == ""  # nothing was held back without stop strings
    assert pieces == list(text)  # each char released as soon as it comes
    assert stream.text == text and not stream.stopped


def test_stop_string_spanning_tokens(char_tok):
    """'stop' spans 4 tokens: none of its characters is ever released."""
    stream = TextStream(char_tok, ("stop",))
    out = [stream.push(i) for i in char_tok.encode("abc stop here")]
    assert out[:4] == ["a", "b", "c", " "]
    assert out[4:] == [""] * 9  # s, t, o held; p completes the stop; the rest is dropped
    assert stream.stopped and stream.finish() == ""
    assert stream.text == "abc "


def test_text_after_stop_is_dropped(char_tok):
    stream = TextStream(char_tok, ("xy",))
    out = [stream.push(i) for i in char_tok.encode("abxyzzz")]
    assert out == ["a", "b", "", "", "", "", ""]
    assert stream.stopped and stream.finish() == ""
    assert stream.text == "ab"


def test_held_prefix_released_on_finish(char_tok):
    """A tail that begins a stop string waits; when the stop never completes, finish() sends it."""
    stream = TextStream(char_tok, ("cat!",))
    out = [stream.push(i) for i in char_tok.encode("a ca")]
    assert "".join(out) == "a "
    assert not stream.stopped
    assert stream.finish() == "ca"


def test_held_prefix_released_when_stop_breaks(char_tok):
    stream = TextStream(char_tok, ("cat!",))
    out = [stream.push(i) for i in char_tok.encode("cats")]
    assert out == ["", "", "", "cats"]
    assert not stream.stopped and stream.finish() == ""


def test_overlapping_prefix(char_tok):
    """'aab' in 'aaab': the first 'a' is safe once three a's are seen."""
    stream = TextStream(char_tok, ("aab",))
    out = [stream.push(i) for i in char_tok.encode("aaab")]
    assert out == ["", "", "a", ""]
    assert stream.stopped and stream.text == "a"


def test_earliest_of_several_stop_strings(char_tok):
    stream = TextStream(char_tok, ("world", "lo w"))
    released = "".join(stream.push(i) for i in char_tok.encode("hello world"))
    assert stream.stopped
    assert released + stream.finish() == "hel"


def test_stop_at_start(char_tok):
    pieces, rest, stream = run(char_tok, "stop now", stop=("st",))
    assert stream.stopped and "".join(pieces) + rest == ""


def test_bpe_really_splits_characters(bpe_tok):
    ids = bpe_tok.encode("é€😀")
    assert len(ids) == 2 + 3 + 4  # one token per UTF-8 byte
    assert all(REPLACEMENT in bpe_tok.decode([i]) for i in ids)


@pytest.mark.parametrize(
    "text", ["héllo wörld", "price: 5€ ok", "smile 😀😀 now", "日本語のテキスト", "€"]
)
def test_multibyte_never_released_as_replacement(bpe_tok, text):
    pieces, rest, stream = run(bpe_tok, text)
    for piece in [*pieces, rest]:
        assert REPLACEMENT not in piece
    assert "".join(pieces) + rest == text
    assert rest == ""  # every character completed before the end


def test_incomplete_character_at_end_is_flushed(bpe_tok):
    """An output that really ends mid-character: finish() releases what decode gives."""
    ids = bpe_tok.encode("ab€")[:-1]  # drop the last byte of €
    stream = TextStream(bpe_tok)
    released = "".join(stream.push(i) for i in ids)
    assert released == "ab"
    assert stream.finish() == REPLACEMENT


def test_multibyte_stop_string(bpe_tok):
    text = "go 😀 stop"
    pieces, rest, stream = run(bpe_tok, text, stop=("😀",))
    assert stream.stopped
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) + rest == "go "


def test_stop_string_after_multibyte(bpe_tok):
    text = "é€ end. more"
    pieces, rest, stream = run(bpe_tok, text, stop=("end",))
    assert stream.stopped
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) + rest == "é€ "


def test_stop_inside_one_token_drops_its_tail(bpe_tok):
    """A single token holding the stop string and more text: the more is dropped too."""
    ids = bpe_tok.encode("the quick brown")
    assert "ick" in [bpe_tok.decode([i]) for i in ids]
    pieces, rest, stream = run(bpe_tok, "the quick brown", stop=("ic",))
    assert stream.stopped
    assert "".join(pieces) + rest == "the qu"
