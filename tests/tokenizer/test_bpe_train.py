"""BPE training: the reference trainer's merges, its incremental counts, the vocabulary layout,
fast == reference, and every way training input can be wrong."""

from __future__ import annotations

import pytest
from tests.conftest import needs_shakespeare
from tests.tokenizer.awkward import AWKWARD

from gptlab.tokenizer.base import SpecialTokenError
from gptlab.tokenizer.byte_map import byte_alphabet_order
from gptlab.tokenizer.fast import ranks_from_merges
from gptlab.tokenizer.patterns import get_pattern
from gptlab.tokenizer.reference import (
    BPETrainer,
    count_pairs,
    count_words,
    encode_chunk,
    merge_pair,
    train_ranks,
)
from gptlab.tokenizer.train import DEFAULT_SPECIAL_TOKENS, train_bpe_tokenizer

GPT2 = get_pattern("gpt2")


def learned(ranks: dict[bytes, int]) -> list[bytes]:
    """The merged tokens in rank order."""
    return [t for t, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]


def test_count_words_splits_with_the_pattern():
    counts = count_words(["the cat, the hat", "the"], GPT2)
    assert counts == {b"the": 2, b" cat": 1, b",": 1, b" the": 1, b" hat": 1}


def test_merge_pair_is_left_to_right_and_non_overlapping():
    assert merge_pair([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge_pair([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]


def test_first_merges_and_the_tie_rule():
    # pairs: ab 3, ' a' 2, then ' c' and cd tie at 1
    ranks = train_ranks(count_words(["ab ab ab cd"], GPT2), 259)
    assert learned(ranks) == [b"ab", b" ab", b"cd"]
    # cd wins the tie: GPT-2's byte alphabet puts printable bytes before the space
    order = byte_alphabet_order()
    assert order[ord("c")] < order[ord(" ")]


@needs_shakespeare
def test_sensible_merges_on_english(text):
    ranks = train_ranks(count_words([text], GPT2), 300)
    top = learned(ranks)[:20]
    assert len(ranks) == 300
    assert any(t.strip() in (b"the", b"th", b"he", b"an", b"in", b"er") for t in top), top
    assert all(len(t) <= 6 for t in top)


def test_incremental_counts_equal_a_recount_every_step():
    text = "aaaa aaa abab babab the theme thematic aaaa bbbb abba " * 3 + "x\n\n  y\t"
    trainer = BPETrainer(count_words([text], GPT2))
    order = byte_alphabet_order()

    def age(t):
        return order[t] if t < 256 else t

    while True:
        brute = {p: n for p, n in count_pairs(trainer.words, trainer.counts).items() if n}
        assert trainer.pair_counts == brute
        if not brute:
            break
        expected = max(brute, key=lambda p: (brute[p], -age(p[0]), -age(p[1])))
        n_merges = len(trainer.merges)
        trainer.step()
        assert trainer.merges[n_merges][0] == expected
    assert trainer.step() is None
    assert len(trainer.vocab) == 256 + len(trainer.merges)


def test_training_is_deterministic_and_order_free(shakespeare):
    parts = shakespeare[:50_000].split("\n")
    a = train_ranks(count_words(parts, GPT2), 400)
    b = train_ranks(count_words(reversed(parts), GPT2), 400)
    assert a == b


def test_encode_chunk_merges_lowest_rank_first():
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"bc": 257}
    assert encode_chunk(b"abc", ranks) == [256, ord("c")]
    ranks = {bytes([b]): b for b in range(256)} | {b"bc": 256, b"ab": 257}
    assert encode_chunk(b"abc", ranks) == [ord("a"), 256]
    assert encode_chunk(b"aaa", ranks | {b"aa": 258}) == [258, ord("a")]  # leftmost on ties
    assert encode_chunk(b"xyz", ranks | {b"xyz": 300}) == [300]  # a whole-chunk token at once


def test_layout_bytes_then_merges_then_specials(shakespeare):
    tok = train_bpe_tokenizer([shakespeare[:100_000]], 512, "gpt4", backend="reference")
    assert tok.vocab_size == 512
    assert all(tok.ranks[bytes([b])] == b for b in range(256))
    assert sorted(tok.ranks.values()) == list(range(512 - len(DEFAULT_SPECIAL_TOKENS)))
    assert list(tok.special_tokens) == list(DEFAULT_SPECIAL_TOKENS)
    assert list(tok.special_tokens.values()) == list(range(503, 512))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (503, 504, 505)
    assert tok.pattern_name == "gpt4"


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_fast_and_reference_learn_the_same_vocabulary(shakespeare, pattern):
    texts = [shakespeare[:100_000], shakespeare[:30_000].upper(), *AWKWARD]
    fast = train_bpe_tokenizer(texts, 700, pattern, backend="fast", allow_special_text=True)
    ref = train_bpe_tokenizer(texts, 700, pattern, backend="reference", allow_special_text=True)
    assert fast.ranks == ref.ranks
    assert fast.fingerprint() == ref.fingerprint()


def test_fast_and_reference_agree_on_all_of_shakespeare(shakespeare):
    fast = train_bpe_tokenizer([shakespeare], 2048, backend="fast")
    ref = train_bpe_tokenizer([shakespeare], 2048, backend="reference")
    assert fast.ranks == ref.ranks


def test_hf_merges_convert_to_contiguous_distinct_ranks():
    merges = [["b", "c"], ["a", "b"], ["ab", "c"], ["a", "bc"], "Ġ a", ["Ġa", "bc"]]
    ranks = ranks_from_merges(merges)
    assert learned(ranks) == [b"bc", b"ab", b"abc", b" a", b" abc"]  # the 2nd 'abc' is dropped
    assert sorted(ranks.values()) == list(range(261))


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_special_spelling_in_training_text(backend, shakespeare):
    corpus = [shakespeare[:20_000], f"more text <|eos|> {shakespeare[:100]}"]
    with pytest.raises(SpecialTokenError, match=r"text 2 contains .*'<\|eos\|>'.*allow-special"):
        train_bpe_tokenizer(corpus, 300, backend=backend)
    tok = train_bpe_tokenizer(corpus, 300, backend=backend, allow_special_text=True)
    assert tok.encode_ordinary("<|eos|>") != [tok.eos_id]
    assert tok.encode("<|eos|>", allowed_special=True) == [tok.eos_id]


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_empty_corpus(backend):
    for corpus in ([], [""], ["", ""]):
        with pytest.raises(ValueError, match="corpus is empty"):
            train_bpe_tokenizer(corpus, 300, backend=backend)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"vocab_size": 264}, "use at least 265"),
        ({"vocab_size": 300, "special_tokens": []}, "bos '<|bos|>' is not among"),
        ({"vocab_size": 300, "pattern": "gpt5"}, "unknown split pattern 'gpt5'"),
        ({"vocab_size": 300, "backend": "rust"}, "unknown training backend"),
        ({"vocab_size": 300, "special_tokens": ["<|bos|>", "<|bos|>"]}, "twice"),
        ({"vocab_size": 100_000}, "use vocab_size at most"),
    ],
)
def test_bad_training_arguments(shakespeare, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        train_bpe_tokenizer([shakespeare[:20_000]], **kwargs)


def test_no_special_tokens_at_all(shakespeare):
    text = shakespeare[:20_000]
    tok = train_bpe_tokenizer([text], 300, special_tokens=[], bos=None, eos=None, pad=None)
    assert tok.vocab_size == 300 and tok.special_tokens == {} and tok.bos_id is None
    assert tok.decode(tok.encode(text)) == text
