"""Pretrained encodings: our GPT-2 (converted from the data-gym files) against tiktoken's own,
every offline source, and the errors when files are missing or wrong."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import shutil

import pytest
from tests.tokenizer.awkward import AWKWARD, random_texts
from tests.tokenizer.conftest import gpt2_files, needs_gpt2

from gptlab.errors import GptlabError
from gptlab.tokenizer.base import SpecialTokenError
from gptlab.tokenizer.load import load_tokenizer
from gptlab.tokenizer.pretrained import PRETRAINED, gpt2_ranks, load_pretrained

TEXTS = AWKWARD + random_texts(200, seed=3)


def test_reference_gpt2_matches_tiktoken_on_awkward_text(gpt2_tok, tiktoken_gpt2):
    ref = gpt2_tok.with_backend("reference")
    for text in TEXTS:
        assert ref.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text), text
        assert ref.encode(text, allowed_special=True) == tiktoken_gpt2.encode(
            text, allowed_special="all"
        )
        if "<|endoftext|>" in text:
            with pytest.raises(SpecialTokenError, match="endoftext"):
                ref.encode(text)
            with pytest.raises(ValueError):
                tiktoken_gpt2.encode(text)
        else:
            assert ref.encode(text) == tiktoken_gpt2.encode(text)
    assert ref.encode("Hello world") == [15496, 995]


def test_fast_gpt2_matches_tiktoken_on_shakespeare(gpt2_tok, tiktoken_gpt2, shakespeare):
    docs = shakespeare.split("\n\n")
    assert gpt2_tok.encode_batch(docs) == tiktoken_gpt2.encode_batch(docs)
    ids = gpt2_tok.encode(shakespeare)
    assert ids == tiktoken_gpt2.encode(shakespeare) and gpt2_tok.decode(ids) == shakespeare
    assert gpt2_tok.token_bytes()[ids].sum() == len(shakespeare.encode("utf-8"))
    assert gpt2_tok.token_bytes().tolist()[:50256] == [
        len(tiktoken_gpt2.decode_single_token_bytes(i)) for i in range(50256)
    ]


def test_gpt2_vocabulary(gpt2_tok):
    assert gpt2_tok.vocab_size == 50257 and gpt2_tok.pattern_name == "gpt2"
    assert gpt2_tok.bos_id == gpt2_tok.eos_id == 50256 and gpt2_tok.pad_id is None
    assert gpt2_tok.token_to_bytes(50256) == b"<|endoftext|>"
    assert gpt2_tok.token_bytes()[50256] == 0


@needs_gpt2
def test_gpt2_from_tiktoken_cache_and_saved_copy(tmp_path, gpt2_tok):
    cache = gpt2_files() / "tiktoken_cache"
    from_cache = load_pretrained("gpt2", data_dir=tmp_path / "none", tiktoken_cache_dir=cache)
    assert from_cache.fingerprint() == gpt2_tok.fingerprint()
    gpt2_tok.save(tmp_path / "saved")  # a run directory carries the whole vocabulary
    saved = load_tokenizer(tmp_path / "saved")
    assert saved.fingerprint() == gpt2_tok.fingerprint() and saved.eos_id == 50256


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_missing_files_say_where_to_put_them(tmp_path, name):
    with pytest.raises(GptlabError, match=f"put .* in {tmp_path}/") as e:
        load_pretrained(name, data_dir=tmp_path, tiktoken_cache_dir=tmp_path / "cache")
    assert "openaipublic" in str(e.value) and "GPTLAB_OFFLINE" in str(e.value)


def test_wrong_file_fails_its_hash(tmp_path):
    (tmp_path / "tiktoken").mkdir()
    (tmp_path / "tiktoken" / "cl100k_base.tiktoken").write_text("AA== 0\n")
    with pytest.raises(ValueError, match="not the published cl100k_base.tiktoken"):
        load_pretrained("cl100k_base", data_dir=tmp_path)


@needs_gpt2
def test_disagreeing_gpt2_files_are_refused():
    folder = gpt2_files()
    encoder = (folder / "encoder.json").read_bytes()
    lines = (folder / "vocab.bpe").read_bytes().split(b"\n")
    lines[10], lines[11] = lines[11], lines[10]
    with pytest.raises(ValueError, match="merge 10 .* different vocabularies"):
        gpt2_ranks(encoder, b"\n".join(lines))


@needs_gpt2
def test_our_conversion_equals_tiktokens(monkeypatch):
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read local files, cache nothing
    folder = gpt2_files()
    theirs = data_gym_to_mergeable_bpe_ranks(
        str(folder / "vocab.bpe"), str(folder / "encoder.json")
    )
    ours = gpt2_ranks((folder / "encoder.json").read_bytes(), (folder / "vocab.bpe").read_bytes())
    assert ours == theirs


def test_unknown_pretrained_name():
    with pytest.raises(ValueError, match="choose one of: gpt2, cl100k_base, o200k_base"):
        load_pretrained("gpt3")


@needs_gpt2
def test_shared_folder_is_left_alone(tmp_path):
    copy = tmp_path / "gpt2_tokenizer"
    shutil.copytree(gpt2_files(), copy)
    before = sorted(p.name for p in copy.rglob("*"))
    load_pretrained("gpt2", data_dir=tmp_path)
    assert sorted(p.name for p in copy.rglob("*")) == before


@pytest.mark.parametrize("where", ["data_dir", "tiktoken_cache"])
def test_tiktoken_file_loading_path(tmp_path, monkeypatch, where):
    """cl100k_base's real file is 1.7 MB and not in the shared data; a stand-in with the same
    layout (and its own pinned hash) exercises the same code."""
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    text = "".join(f"{base64.b64encode(t).decode()} {i}\n" for t, i in ranks.items())
    spec = PRETRAINED["cl100k_base"]
    remote = spec.files["cl100k_base.tiktoken"]
    fake = dataclasses.replace(remote, sha256=hashlib.sha256(text.encode()).hexdigest())
    monkeypatch.setitem(
        PRETRAINED, "cl100k_base", dataclasses.replace(spec, files={"cl100k_base.tiktoken": fake})
    )
    if where == "data_dir":
        path = tmp_path / "tiktoken" / "cl100k_base.tiktoken"
    else:
        path = tmp_path / "cache" / hashlib.sha1(remote.url.encode()).hexdigest()
    path.parent.mkdir()
    path.write_text(text)
    tok = load_pretrained("cl100k_base", data_dir=tmp_path, tiktoken_cache_dir=tmp_path / "cache")
    assert tok.vocab_size == 100277 and tok.eos_id == 100257 and tok.pattern_name == "gpt4"
    assert tok.encode("ab<|endoftext|>", allowed_special=True) == [256, 100257]
    with pytest.raises(ValueError, match="unused"):
        tok.decode([100256])
