"""load_tokenizer / resolve_tokenizer: dispatch on kind, names, directories, clear errors."""

from __future__ import annotations

import pytest
from tests.tokenizer.conftest import gpt2_files, needs_gpt2

from gptlab.errors import GptlabError
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.load import load_tokenizer, resolve_tokenizer


def test_load_dispatches_on_kind(tmp_path, text, shakespeare_tok):
    (tmp_path / "char").mkdir()
    CharTokenizer.train(text).save(tmp_path / "char")
    shakespeare_tok.save(tmp_path / "bpe")
    assert isinstance(load_tokenizer(tmp_path / "char"), CharTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "bpe"), BPETokenizer)
    assert isinstance(resolve_tokenizer(str(tmp_path / "bpe"), data_dir=None), BPETokenizer)


@needs_gpt2
def test_resolve_pretrained_name():
    tok = resolve_tokenizer("gpt2", data_dir=gpt2_files().parent)
    assert tok.encode("Hello world") == [15496, 995]


@pytest.mark.parametrize(
    "name, error, needle",
    [
        ("char", ValueError, "built from the corpus by gptlab prepare"),
        ("gpt3", ValueError, "unknown tokenizer 'gpt3'; give one of gpt2"),
        ("./nowhere", GptlabError, "nowhere does not exist"),
        ("runs/x/tok", GptlabError, "does not exist"),
    ],
)
def test_resolve_errors(tmp_path, monkeypatch, name, error, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=needle):
        resolve_tokenizer(name, data_dir=None)


def test_resolve_a_file_or_a_folder_without_tokenizer(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        resolve_tokenizer(str(tmp_path / "f.txt"), data_dir=None)
    with pytest.raises(ValueError, match="holds no tokenizer.json"):
        resolve_tokenizer(str(tmp_path), data_dir=None)


def test_missing_pretrained_offline_is_a_runtime_error(tmp_path):
    with pytest.raises(GptlabError, match="cl100k_base.tiktoken"):
        resolve_tokenizer("cl100k_base", data_dir=tmp_path, allow_download=False)
