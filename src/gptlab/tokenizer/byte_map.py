"""GPT-2's byte <-> printable-character map, used only to read and write other tools' formats.

GPT-2's `encoder.json`/`vocab.bpe` and Hugging Face's ByteLevel pre-tokenizer spell each byte as
a printable Unicode character, so token strings survive JSON and whitespace-separated files: the
188 printable Latin-1 bytes stand for themselves and the other 68 (controls, space, 0x7f-0xa0,
soft hyphen) are shifted to U+0100 upwards, in byte order (so the space 0x20 becomes 'Ġ').
Our own files store raw bytes (base64), so this map never reaches them.
"""

from __future__ import annotations

from functools import cache

# Bytes whose Latin-1 character is printable: '!'..'~', '¡'..'¬', '®'..'ÿ'.
_PRINTABLE = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]


@cache
def byte_to_char() -> tuple[str, ...]:
    """(256,) the character GPT-2 spells each byte value with."""
    chars = {b: chr(b) for b in _PRINTABLE}
    shifted = (b for b in range(256) if b not in chars)
    for offset, b in enumerate(shifted):
        chars[b] = chr(256 + offset)
    return tuple(chars[b] for b in range(256))


@cache
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_char())}


def unmap(token: str) -> bytes:
    """Raw bytes of a token written in GPT-2's byte alphabet; ValueError on a foreign char."""
    table = char_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise ValueError(f"{e.args[0]!r} is not a GPT-2 byte-alphabet character") from None


@cache
def byte_alphabet_order() -> tuple[int, ...]:
    """(256,) position of each byte when the 256 byte tokens are sorted by their GPT-2 character.

    Hugging Face's trainer numbers its initial alphabet in this order, and breaks ties between
    equally frequent pairs by these numbers; our reference trainer uses it to agree exactly.
    """
    chars = byte_to_char()
    by_char = sorted(range(256), key=lambda b: ord(chars[b]))
    order = [0] * 256
    for position, b in enumerate(by_char):
        order[b] = position
    return tuple(order)
