"""`gptlab sft`: the train command line with --data for conversations and the sft preset."""

from __future__ import annotations

import pytest

from gptlab.cli.main import main
from gptlab.cli.sft import translate


def test_data_becomes_sft_data_and_the_sft_preset_is_the_default():
    assert translate(["--data", "a.jsonl"]) == ["--preset", "sft", "--sft.data", "a.jsonl"]
    assert translate(["--data=a.jsonl", "--preset", "tiny"]) == [
        "--sft.data=a.jsonl", "--preset", "tiny",
    ]  # fmt: skip
    assert translate(["--resume", "--train.out_dir", "r"]) == ["--resume", "--train.out_dir", "r"]


def test_without_conversations_one_line_and_exit_2(cli_env, capsys):
    assert main(["sft", "--init-from", "runs/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data FILE" in err[0]


def test_help_and_usage_errors_name_gptlab_sft(cli_env, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sft", "--help"])
    assert e.value.code == 0 and "usage: gptlab sft" in capsys.readouterr().out
    assert main(["sft", "--data", "x.jsonl", "--bogus"]) == 2
    assert "(see gptlab sft --help)" in capsys.readouterr().err
