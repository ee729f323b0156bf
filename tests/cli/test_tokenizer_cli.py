"""`gptlab tokenizer train|encode|decode|stats`, in process."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from tests.conftest import SHARED

from gptlab.cli.main import main

needs_gpt2 = pytest.mark.skipif(
    not SHARED or not (Path(SHARED) / "gpt2_tokenizer" / "encoder.json").is_file(),
    reason="set GPTLAB_DATA_DIR to the shared data folder",
)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def trained(cli_env, text_file, capsys) -> Path:
    assert main(["tokenizer", "train", str(text_file), "--vocab-size", "300", "--out", "tok"]) == 0
    capsys.readouterr()
    return cli_env / "tok"


def _encode(capsys, *args: str) -> str:
    assert main(["tokenizer", "encode", *args]) == 0
    return capsys.readouterr().out


def _decode(capsys, monkeypatch, tokenizer: str, ids_line: str) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(ids_line))
    assert main(["tokenizer", "decode", "--tokenizer", tokenizer]) == 0
    return capsys.readouterr().out


def test_train_prints_and_saves(cli_env, text_file, capsys):
    args = ["tokenizer", "train", str(text_file), "--vocab-size", "300", "--out", "tok"]
    assert main([*args, "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "trained 300-token BPE" in out and "35 merges + 9 special" in out
    assert "1 document," in out and "saved to tok" in out
    config = json.loads((cli_env / "tok" / "tokenizer.json").read_text())
    assert config["vocab_size"] == 300 and config["name"] == "tok"
    assert main([*args, "--pattern", "gpt2"]) == 0  # a tokenizer dir may be overwritten


def test_train_refuses_a_foreign_out_dir(cli_env, text_file, capsys):
    (cli_env / "busy").mkdir()
    (cli_env / "busy" / "notes.txt").write_text("mine")
    args = ["tokenizer", "train", str(text_file), "--vocab-size", "300", "--out", "busy"]
    assert main(args) == 1
    assert "not empty and is not a tokenizer directory" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--vocab-size", "100"], 2, "use at least 265"),
        (["--vocab-size", "300", "--pattern", "gpt5"], 2, "unknown split pattern"),
        (["--vocab-size", "300", "--special-tokens", "<|x|>"], 2, "pass bos=None"),
        (["--vocab-size", "300", "--backend", "rust"], 2, "--backend"),
        (["--vocab-size", "x"], 2, "--vocab-size"),
    ],
)
def test_train_bad_flags(cli_env, text_file, capsys, args, code, needle):
    assert main(["tokenizer", "train", str(text_file), "--out", "t", *args]) == code
    assert needle in _one_error_line(capsys)
    assert not (cli_env / "t").exists()


def test_train_bad_inputs(cli_env, capsys):
    assert main(["tokenizer", "train", "missing.txt", "--vocab-size", "300", "--out", "t"]) == 1
    assert "missing.txt" in _one_error_line(capsys)
    (cli_env / "special.txt").write_text("hello <|eos|> world " * 50)
    assert main(["tokenizer", "train", "special.txt", "--vocab-size", "270", "--out", "t"]) == 2
    assert "--allow-special-text" in _one_error_line(capsys)
    args = ["tokenizer", "train", "special.txt", "--vocab-size", "270", "--out", "t"]
    assert main([*args, "--allow-special-text"]) == 0


@pytest.mark.parametrize(
    "sample",
    ["hello world", "trailing spaces and newlines  \n\n", "\n", "tabs\tand 中文 😀\r\n", ""],
)
def test_encode_decode_round_trip(trained, capsys, monkeypatch, sample):
    ids_line = _encode(capsys, "--tokenizer", "tok", sample)
    assert ids_line.endswith("\n") and ids_line.count("\n") == 1
    assert _decode(capsys, monkeypatch, "tok", ids_line) == sample  # nothing added, nothing lost
    (trained.parent / "in.txt").write_bytes(sample.encode("utf-8"))
    assert _encode(capsys, "--tokenizer", "tok", "--file", "in.txt") == ids_line
    monkeypatch.setattr(sys, "stdin", io.StringIO(sample))
    assert _encode(capsys, "--tokenizer", "tok") == ids_line


def test_encode_special_tokens(trained, capsys):
    assert main(["tokenizer", "encode", "--tokenizer", "tok", "a<|eos|>"]) == 2
    assert "--special allow" in _one_error_line(capsys)
    allowed = _encode(capsys, "--tokenizer", "tok", "--special", "allow", "a<|eos|>").split()
    assert allowed[-1] == "292"  # 256 + 35 merges, then bos 291, eos 292
    plain = _encode(capsys, "--tokenizer", "tok", "--special", "ordinary", "a<|eos|>").split()
    assert "292" not in plain and len(plain) > 2
    ref = ["--backend", "reference", "--special", "ordinary", "a<|eos|>"]
    assert _encode(capsys, "--tokenizer", "tok", *ref).split() == plain


@pytest.mark.parametrize(
    "ids, needle",
    [
        ("1 2 x", "'x' is not a token id"),
        ("1 2.5", "'2.5' is not a token id"),
        ("1 300", "token id 300 is out of range"),
        ("-3", "token id -3 is out of range"),
    ],
)
def test_decode_bad_ids(trained, capsys, ids, needle):
    assert main(["tokenizer", "decode", "--tokenizer", "tok", "--ids", ids]) == 2
    assert needle in _one_error_line(capsys)


def test_decode_accepts_commas(trained, capsys):
    assert main(["tokenizer", "decode", "--tokenizer", "tok", "--ids", "104, 105"]) == 0
    assert capsys.readouterr().out == "hi"


@needs_gpt2
def test_gpt2_by_name(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("GPTLAB_DATA_DIR", SHARED)
    assert _encode(capsys, "--tokenizer", "gpt2", "Hello world") == "15496 995\n"
    assert _decode(capsys, monkeypatch, "gpt2", "15496 995 50256") == "Hello world<|endoftext|>"


def test_stats(trained, text_file, capsys):
    assert main(["tokenizer", "stats", "--tokenizer", "tok", str(text_file), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "bytes per token" in out and "distinct ids of 300" in out
    assert "longest tokens" in out and "most frequent tokens" in out
    assert "vs gpt2" in out
    if SHARED:
        assert "gpt2 tokens; this tokenizer needs" in out


def test_stats_missing_file(trained, capsys):
    assert main(["tokenizer", "stats", "--tokenizer", "tok", "nope.txt"]) == 1
    assert "nope.txt does not exist" in _one_error_line(capsys)


def test_unknown_tokenizer_and_command(cli_env, capsys):
    assert main(["tokenizer", "encode", "--tokenizer", "gpt3", "x"]) == 2
    assert "unknown tokenizer 'gpt3'" in _one_error_line(capsys)
    assert main(["tokenizer", "encode", "--tokenizer", "char", "x"]) == 2
    assert "built from the corpus" in _one_error_line(capsys)
    assert main(["tokenizer", "frobnicate"]) == 2
    assert "choose one of: train, encode, decode, stats" in _one_error_line(capsys)


def test_usage(cli_env, capsys):
    assert main(["tokenizer"]) == 2
    assert "train" in capsys.readouterr().out
    assert main(["tokenizer", "--help"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "train", "--help"])
    assert e.value.code == 0
    assert "--vocab-size" in capsys.readouterr().out
