"""BPETokenizer: tiktoken and reference backends agree, special tokens, token bytes, decoding
errors, and the save format (round trip, tiktoken can read it, corrupt files fail clearly)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.tokenizer.awkward import AWKWARD, random_texts

from gptlab.tokenizer.base import SpecialTokenError
from gptlab.tokenizer.bpe import RANKS_FILE, BPETokenizer
from gptlab.tokenizer.load import load_tokenizer

TEXTS = AWKWARD + random_texts(200, seed=2)


def outcome(encode, text, **kw):
    """Ids, or the error a text raised (so that 'both refuse' also counts as agreeing)."""
    try:
        return encode(text, **kw)
    except SpecialTokenError as e:
        return ("refused", str(e))


def test_backends_agree_on_shakespeare(shakespeare, shakespeare_tok):
    ref = shakespeare_tok.with_backend("reference")
    ids = shakespeare_tok.encode_ordinary(shakespeare)
    assert ref.encode_ordinary(shakespeare) == ids
    assert shakespeare_tok.decode(ids) == shakespeare and ref.decode(ids) == shakespeare
    assert len(ids) < len(shakespeare) / 2.5  # it compresses


@pytest.mark.parametrize("allowed", [False, True])
def test_backends_agree_on_awkward_text(shakespeare_tok, allowed):
    ref = shakespeare_tok.with_backend("reference")
    for text in TEXTS:
        fast_out = outcome(shakespeare_tok.encode, text, allowed_special=allowed)
        assert outcome(ref.encode, text, allowed_special=allowed) == fast_out, text
        assert ref.encode_ordinary(text) == shakespeare_tok.encode_ordinary(text), text
    fast_batch = shakespeare_tok.encode_batch(TEXTS, allowed_special=True)
    assert ref.encode_batch(TEXTS, allowed_special=True, num_threads=2) == fast_batch
    assert shakespeare_tok.encode_ordinary_batch(TEXTS) == ref.encode_ordinary_batch(TEXTS)


def test_round_trip_and_surrogates(shakespeare_tok):
    ref = shakespeare_tok.with_backend("reference")
    for text in TEXTS:
        assert shakespeare_tok.decode(shakespeare_tok.encode(text, allowed_special=True)) == text
    lone = "a\ud800b \ud83d\ude00"  # a lone surrogate and a pair written as two code units
    assert ref.encode_ordinary(lone) == shakespeare_tok.encode_ordinary(lone)
    assert shakespeare_tok.decode(shakespeare_tok.encode_ordinary(lone)) == "a\ufffdb 😀"


def test_special_tokens(shakespeare_tok):
    for tok in (shakespeare_tok, shakespeare_tok.with_backend("reference")):
        bos, eos = tok.bos_id, tok.eos_id
        with pytest.raises(SpecialTokenError, match=r"'<\|eos\|>'"):
            tok.encode("the end<|eos|>")
        with pytest.raises(SpecialTokenError, match=r"'<\|bos\|>'"):
            tok.encode_batch(["fine", "<|bos|>x"])
        assert tok.encode("<|bos|>hi<|eos|>", allowed_special=True) == [
            bos,
            *tok.encode("hi"),
            eos,
        ]
        assert bos not in tok.encode_ordinary("<|bos|>")
        assert tok.encode("<|bos") == tok.encode_ordinary("<|bos")  # a look-alike is text
        assert tok.decode([bos, eos]) == "<|bos|><|eos|>"
        assert tok.find_special("x <|user_start|> y") == "<|user_start|>"


def test_token_bytes_count_every_byte(shakespeare_tok, text):
    sizes = shakespeare_tok.token_bytes()
    assert sizes.shape == (1024,) and sizes.dtype == np.int32
    assert all(sizes[i] == 0 for i in shakespeare_tok.special_tokens.values())
    assert sizes[:256].tolist() == [1] * 256
    for sample in [text, "naïve 中文 😀"]:
        ids = shakespeare_tok.encode(sample)
        assert sizes[ids].sum() == len(sample.encode("utf-8"))  # the basis of bits per byte
    for token, i in shakespeare_tok.ranks.items():
        assert sizes[i] == len(token) == len(shakespeare_tok.token_to_bytes(i))


def test_decode_rejects_bad_ids():
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    tok = BPETokenizer(ranks, r"\S+|\s+", {"<|end|>": 300}, name="gappy")  # ids 257..299 unused
    for t in (tok, tok.with_backend("reference")):
        assert t.vocab_size == 301 and t.decode([256, 300]) == "ab<|end|>"
        assert t.decode([0xE4]) == "\ufffd"  # half a UTF-8 character
        assert t.decode(np.array([256, 300])) == t.decode(torch.tensor([256, 300])) == "ab<|end|>"
        with pytest.raises(ValueError, match="out of range.*0..300"):
            t.decode([1, 301])
        with pytest.raises(ValueError, match="out of range"):
            t.decode([-1])
        with pytest.raises(ValueError, match="280 is unused"):
            t.decode([280])
        with pytest.raises(ValueError, match="must be integers"):
            t.decode(["7"])


@pytest.mark.parametrize(
    "ranks, special, kwargs, needle",
    [
        ({b"a": 0}, {}, {}, "lack 255 single-byte"),
        ("bytes", {"<|x|>": 5}, {}, "not unique"),
        ("bytes", {"<|x|>": 300, "<|x|>y": 301}, {}, "is part of"),
        ("bytes", {"<|x|>": 300}, {"bos": "<|s|>"}, "not a special token"),
        ("bytes", {}, {"backend": "rust"}, "unknown BPE backend"),
    ],
)
def test_constructor_validates(ranks, special, kwargs, needle):
    if ranks == "bytes":
        ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match=needle):
        BPETokenizer(ranks, r"\S+", special, **kwargs)
    with pytest.raises(ValueError, match="does not compile"):
        BPETokenizer({bytes([b]): b for b in range(256)}, r"(", {})


def test_save_load_round_trip(tmp_path, shakespeare_tok, text, monkeypatch):
    files = shakespeare_tok.save(tmp_path)
    assert [f.name for f in files] == ["tokenizer.json", RANKS_FILE]
    config = json.loads(files[0].read_text())
    assert config["kind"] == "bpe" and config["pattern_name"] == "gpt4"
    assert config["vocab_size"] == 1024 and config["bos"] == "<|bos|>"
    again = load_tokenizer(tmp_path)
    assert isinstance(again, BPETokenizer)
    assert again.fingerprint() == shakespeare_tok.fingerprint()
    assert again.encode(text) == shakespeare_tok.encode(text)
    assert again.special_tokens == shakespeare_tok.special_tokens
    assert BPETokenizer.load(tmp_path, backend="reference").encode(text) == again.encode(text)
    # the ranks file is tiktoken's own format
    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local file without caching it
    assert load_tiktoken_bpe(str(files[1])) == shakespeare_tok.ranks


def test_fingerprint_tracks_what_encodes(shakespeare_tok, text):
    other = BPETokenizer(
        shakespeare_tok.ranks, r"\S+|\s+", shakespeare_tok.special_tokens, name="x"
    )
    assert other.fingerprint() != shakespeare_tok.fingerprint()
    assert shakespeare_tok.with_backend("reference").fingerprint() == shakespeare_tok.fingerprint()


def _corrupt(directory, what):
    config_path, ranks_path = directory / "tokenizer.json", directory / RANKS_FILE
    config = json.loads(config_path.read_text())
    if what == "json":
        config_path.write_text("{not json")
    elif what == "field":
        del config["pattern"]
        config_path.write_text(json.dumps(config))
    elif what == "kind":
        config["kind"] = "wordpiece"
        config_path.write_text(json.dumps(config))
    elif what == "missing ranks":
        ranks_path.unlink()
    elif what == "bad line":
        lines = ranks_path.read_text().splitlines()
        ranks_path.write_text("\n".join([*lines[:5], "!!notbase64 5", *lines[6:]]) + "\n")
        config.pop("ranks_sha256")
        config_path.write_text(json.dumps(config))
    elif what == "edited ranks":
        ranks_path.write_text(ranks_path.read_text().replace(" 300\n", " 9999\n"))
    elif what == "vocab size":
        config["vocab_size"] = 999
        config_path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "what, needle",
    [
        ("json", "not a readable tokenizer file"),
        ("field", "lacks or mangles 'pattern'"),
        ("kind", "unknown kind 'wordpiece'"),
        ("missing ranks", "cannot read the ranks file"),
        ("bad line", "line 6 is not 'base64 rank'"),
        ("edited ranks", "does not match its tokenizer.json"),
        ("vocab size", "says vocab_size 999"),
    ],
)
def test_corrupt_files_fail_with_a_fix(tmp_path, shakespeare_tok, what, needle):
    shakespeare_tok.save(tmp_path)
    _corrupt(tmp_path, what)
    with pytest.raises(ValueError, match=needle) as e:
        load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)


def test_describe(shakespeare_tok):
    assert "vocab 1,024" in shakespeare_tok.describe()
    assert "gpt4" in shakespeare_tok.describe()
