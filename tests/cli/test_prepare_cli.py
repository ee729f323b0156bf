"""`gptlab prepare` and data problems at train time, through the CLI: one line, non-zero exit."""

import json

import pytest
from tests.conftest import SHARED

from gptlab.cli.main import main

TINY = ["--preset", "tiny", "--train.max_steps", "6", "--train.eval_interval", "3"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_prepare_prints_counts(cli_env, capsys, text_file):
    assert main(["prepare", str(text_file), "--out", "prep", "--val_fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "train /" in out and "in 1 / 1 documents" in out
    meta = json.loads((cli_env / "prep" / "meta.json").read_text())
    assert meta["val_fraction"] == 0.2


def test_bad_sources(cli_env, capsys, tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"body": "x"}\n')
    assert main(["prepare", str(tmp_path / "rows.jsonl")]) == 1
    assert "no field 'text'" in _one_error_line(capsys)
    (tmp_path / "empty.txt").write_text("  \n")
    assert main(["prepare", str(tmp_path / "empty.txt")]) == 1
    assert "no text to train on" in _one_error_line(capsys)
    assert main(["prepare", str(tmp_path / "x.txt"), "--doc_separator", "("]) == 2
    assert "not a valid regex" in _one_error_line(capsys)
    assert main(["prepare", str(tmp_path / "empty.txt"), "--tokenizer", "nope"]) == 1
    assert "unknown tokenizer 'nope'" in _one_error_line(capsys)


def test_bad_parquet_column(cli_env, capsys, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a b c"] * 5}), tmp_path / "d.parquet")
    assert main(["prepare", str(tmp_path / "d.parquet")]) == 1
    assert "no column 'text'" in _one_error_line(capsys)


@pytest.mark.skipif(not SHARED, reason="needs the GPT-2 files in GPTLAB_DATA_DIR")
def test_special_text_in_a_document(cli_env, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_DATA_DIR", SHARED)
    (tmp_path / "s.txt").write_text("hello <|endoftext|> world " * 50)
    assert main(["prepare", str(tmp_path / "s.txt"), "--tokenizer", "gpt2"]) == 1
    assert "--data.allow_special_text" in _one_error_line(capsys)
    args = ["prepare", str(tmp_path / "s.txt"), "--tokenizer", "gpt2", "--allow_special_text"]
    assert main(args) == 0


def test_corrupt_shard_at_train_time(cli_env, capsys, text_file):
    assert main(["prepare", str(text_file), "--out", "prep"]) == 0
    shard = cli_env / "prep" / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", *TINY, "--data.dataset", "prep", "--train.out_dir", "r"]) == 1
    assert "sha256" in _one_error_line(capsys)
    assert not (cli_env / "r").exists()  # nothing started
