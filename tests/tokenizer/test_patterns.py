"""The split patterns: lookup by name, and the three regex engines split identically."""

from __future__ import annotations

import pytest
import regex
import tiktoken
from tests.tokenizer.awkward import AWKWARD, random_texts
from tokenizers import Regex, pre_tokenizers

from gptlab.tokenizer.patterns import (
    GPT2,
    GPT4,
    PATTERNS,
    canonical_pattern_name,
    get_pattern,
    pattern_name_of,
)

# tiktoken's cl100k_base string (tiktoken_ext/openai_public.py); ours drops one possessive '+'.
CL100K_EXACT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
TEXTS = AWKWARD + random_texts(400, seed=1)


def regex_chunks(pattern: str, text: str) -> list[str]:
    return regex.findall(pattern, text)


def hf_chunks(pattern: str, text: str) -> list[str]:
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return [piece for piece, _ in split.pre_tokenize_str(text)]


def tiktoken_chunks(pattern: str, texts: list[str]) -> list[list[str]]:
    """What tiktoken's engine splits each text into, made visible: with every prefix of every
    expected chunk as a token (by length), BPE rebuilds exactly the chunks tiktoken cut."""
    ranks = {bytes([b]): b for b in range(256)}
    for text in texts:
        for chunk in regex_chunks(pattern, text):
            data = chunk.encode("utf-8")
            for k in range(2, len(data) + 1):
                ranks.setdefault(data[:k], len(ranks))
    enc = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    out = []
    for text in texts:
        pieces = [enc.decode_single_token_bytes(i) for i in enc.encode_ordinary(text)]
        out.append([p.decode("utf-8") for p in pieces])
    return out


def test_lookup_by_name_and_alias():
    assert get_pattern("gpt2") == GPT2
    assert get_pattern("gpt4") == get_pattern("cl100k") == get_pattern("cl100k_base") == GPT4
    assert canonical_pattern_name("o200k_base") == "o200k"
    assert pattern_name_of(GPT4) == "gpt4" and pattern_name_of(r"\w+") is None


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown split pattern 'gpt5'.*gpt2, gpt4, o200k"):
        get_pattern("gpt5")


def test_gpt2_is_tiktokens_string():
    from tiktoken_ext.openai_public import r50k_pat_str

    assert r50k_pat_str == GPT2


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_three_engines_split_alike(name):
    pattern = PATTERNS[name]
    expected = [regex_chunks(pattern, t) for t in TEXTS]
    for text, chunks in zip(TEXTS, expected, strict=True):
        assert "".join(chunks) == text  # the pattern covers every character
        assert hf_chunks(pattern, text) == chunks, text
    assert tiktoken_chunks(pattern, TEXTS) == expected


def test_gpt4_splits_like_tiktokens_cl100k_string():
    for text in TEXTS:
        assert regex_chunks(GPT4, text) == regex_chunks(CL100K_EXACT, text)
    assert tiktoken_chunks(CL100K_EXACT, TEXTS) == [regex_chunks(GPT4, t) for t in TEXTS]


def test_why_gpt4_drops_a_plus_oniguruma_reads_it_differently():
    assert hf_chunks(CL100K_EXACT, "12345678") == ["12345678"]  # not possessive in Oniguruma
    assert hf_chunks(GPT4, "12345678") == ["123", "456", "78"]
