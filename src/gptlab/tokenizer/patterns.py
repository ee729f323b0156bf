"""The pre-tokenisation regexes, by name: text is split into chunks and BPE never merges across
a chunk boundary (so ' the' and 'the.' cannot become one token).

Three engines run these strings: Python's `regex` (our reference), tiktoken's fancy-regex (fast
encoding) and Hugging Face's Oniguruma (fast training). They must split every text identically,
or the fast and reference paths drift apart. Oniguruma reads `X{1,3}+` as "one or more runs of
X{1,3}" rather than a possessive count, so our "gpt4" pattern writes `\\p{N}{1,3}` without the `+`
that tiktoken's cl100k string has. Nothing follows that group inside its alternative, so the
possessive form can never backtrack there anyway: both strings split every text the same way
(tests/tokenizer/test_patterns.py checks all three engines on awkward text).
"""

from __future__ import annotations

# GPT-2 (OpenAI, 2019), as tiktoken writes it: possessive quantifiers instead of the original's
# `\s+(?!\S)|\s+` ending, same splits and faster. Contractions, letters, numbers, punctuation
# and whitespace runs; a leading space stays attached to the next word.
GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# GPT-4 / cl100k_base: case-insensitive contractions, numbers in groups of at most 3 digits,
# newlines kept apart from other whitespace, and any single non-letter may lead a word.
GPT4 = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# GPT-4o / o200k_base: words split at case changes (CamelCase -> Camel, Case), contractions
# glued to their word, '/' kept with punctuation runs.
O200K = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

PATTERNS = {"gpt2": GPT2, "gpt4": GPT4, "o200k": O200K}
ALIASES = {"cl100k": "gpt4", "cl100k_base": "gpt4", "r50k": "gpt2", "o200k_base": "o200k"}


def canonical_pattern_name(name: str) -> str:
    """'gpt2' | 'gpt4' | 'o200k' for a pattern name or alias; ValueError listing the choices."""
    key = ALIASES.get(name, name)
    if key not in PATTERNS:
        choices = ", ".join([*PATTERNS, *ALIASES])
        raise ValueError(f"unknown split pattern {name!r}; choose one of: {choices}")
    return key


def get_pattern(name: str) -> str:
    """The regex string of a named split pattern (see PATTERNS and ALIASES)."""
    return PATTERNS[canonical_pattern_name(name)]


def pattern_name_of(pattern: str) -> str | None:
    """The name of a pattern string we know, else None (a custom pattern)."""
    return next((name for name, p in PATTERNS.items() if p == pattern), None)
