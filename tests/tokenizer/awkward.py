"""Strings that break tokenizers: whitespace runs, digits, contractions, scripts, emoji, special
token look-alikes; plus seeded random strings over an awkward alphabet."""

from __future__ import annotations

import random

AWKWARD = [
    "",
    "Hello world",
    "hello   world  ",
    "  leading spaces",
    "line one\nline two\n",
    "trailing newlines\n\n\n",
    "\n\n\n",
    " \n \n ",
    "tabs\tand\t\ttabs\t",
    "mixed \t \n \r\n whitespace \r\n",
    "\r\n\r\nwindows\r\n",
    " \u00a0non-breaking\u00a0space \u3000ideographic\u2028line sep",
    "digits 1 12 123 1234 12345 3.14159 1,000,000 ٣٤ ²½",
    "don't can't I'm we'll they've she'd it's DON'T WE'LL I'M",
    "'s 're 've ' s' ''",
    "naïve café façade Ünïcödé ß ǅ",
    "中文分词测试，日本語のテキスト。한국어 텍스트",
    "emoji 😀👍🏽👨\u200d👩\u200d👧 🇺🇸 flags",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937",
    "Ελληνικά Кириллица עברית العربية हिन्दी",
    "code: def f(x):\n    return x**2  # comment\n",
    "punctuation!!! ??? ... --- *** ((( ))) <<< >>>",
    "URL https://example.com/path?q=1&r=2#frag",
    "CamelCaseWords HTTPServer iPhone",
    "<|endoftext",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "<|endoftext|><|endoftext|>",
    " <|endoftext|>\n",
    "< |endoftext| >",
    "<|endoftext|",
    "|endoftext|>",
    "<|bos|>hello<|eos|>",
    "<|bos <|eos| pad|>",
    "zero\u200bwidth\ufeffbom",
    "control \x00\x01\x1b[31m chars \x7f",
    "\x1c\x1d\x1e\x1f\x85\x0b\x0c",
    "a" * 300,
    " " * 50 + "x",
    "x" + " " * 50,
]

_ALPHABET = list(
    "aZé ß\t\n\r'sdtmlvreSLD0129٣²½.,!?-_/\\\"<|>\x00\x0b\x1c\x85\u00a0\u2028\u3000\u200b"
    "\ufeff中文日本한😀👍🏽\u0301Ǆǅ  "
)


def random_texts(n: int, seed: int = 0, max_len: int = 30) -> list[str]:
    """`n` seeded random strings over an alphabet of awkward characters."""
    rng = random.Random(seed)
    return ["".join(rng.choices(_ALPHABET, k=rng.randint(1, max_len))) for _ in range(n)]
