"""What main does with exceptions: a config or usage mistake is one line on stderr and exit 2
(nothing on stdout), any other GptlabError exit 1, and a bug keeps its traceback."""

import subprocess
import sys

import pytest

from gptlab.cli.main import main
from gptlab.errors import GptlabError

TINY = ["--preset", "tiny", "--train.max_steps", "20"]


def _only_an_error_line(capsys) -> str:
    """The run printed nothing but one error line: no summary, no traceback."""
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("c.yaml", "model: [unclosed\n", ["config file c.yaml, line 2", "expected ',' or ']'"]),
        (
            "c.yaml",
            "model:\n  n_layer: 2\n  n_head: 4: 5\n",
            ["config file c.yaml, line 3, column 12", "mapping values are not allowed here"],
        ),
        (
            "c.json",
            '{\n  "model": {"n_layer": 2,}\n}\n',
            ["config file c.json, line 2, column 26", "Expecting property name"],
        ),
        ("c.yaml", "- model\n- train\n", ["config file c.yaml must hold a mapping", "not a list"]),
        ("c.json", "[1, 2]", ["config file c.json must hold a mapping", "not a list"]),
        ("c.yaml", "model: 3\n", ["config file c.yaml: model must be a mapping of fields"]),
        ("c.yaml", "optim:\n  lr: fast\n", ["config file c.yaml: optim.lr must be a number"]),
        (
            "c.yaml",
            "model:\n  n_layers: 2\n",
            [
                "config file c.yaml: unknown config field 'model.n_layers'; "
                "did you mean 'model.n_layer'?"
            ],
        ),
        (
            "c.yaml",
            "optim:\n  zzz: 2\n",
            ["unknown config field 'optim.zzz'; valid fields of optim are: beta1, beta2,"],
        ),
        ("c.yaml", "model:\n  n_head: 5\n", ["c.yaml: model.n_embd 32 is not divisible"]),
    ],
)
def test_bad_config_files_are_one_line(cli_env, capsys, name, content, needles):
    (cli_env / name).write_text(content)
    assert main(["train", *TINY, "--config", name]) == 2
    line = _only_an_error_line(capsys)
    for needle in needles:
        assert needle in line


def test_config_file_that_is_a_directory_missing_or_not_utf8(cli_env, capsys):
    (cli_env / "conf.yaml").mkdir()
    assert main(["train", *TINY, "--config", "conf.yaml"]) == 2
    assert "config file conf.yaml is a directory" in _only_an_error_line(capsys)
    assert main(["train", *TINY, "--config", "missing.yaml"]) == 2
    assert "config file missing.yaml does not exist" in _only_an_error_line(capsys)
    (cli_env / "latin1.yaml").write_bytes(b"data:\n  dataset: caf\xe9\n")
    assert main(["train", *TINY, "--config", "latin1.yaml"]) == 2
    assert "latin1.yaml is not UTF-8 text (byte offset 20)" in _only_an_error_line(capsys)
    assert main(["info", "--config", "conf.yaml"]) == 2  # info reads configs the same way
    assert "is a directory" in _only_an_error_line(capsys)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--preset", "nope"], "unknown preset 'nope'; choose one of: shakespeare_char,"),
        (["--preset"], "argument --preset: expected one argument"),
        (["--optim.warmup_steps", "5000"], "optim.warmup_steps 5000 exceeds train.max_steps 20"),
        (["--train.device", "tpu9"], "train.device 'tpu9' is not a device"),
    ],
)
def test_bad_flags_print_nothing_but_the_error(cli_env, capsys, args, needle):
    assert main(["train", *TINY, *args]) == 2
    assert needle in _only_an_error_line(capsys)


def test_resume_with_a_config_whose_train_section_is_not_a_mapping(cli_env, capsys):
    (cli_env / "c.yaml").write_text("train: 3\n")
    assert main(["train", "--resume", "--config", "c.yaml"]) == 1  # no checkpoint to resume
    assert "no checkpoint" in _only_an_error_line(capsys)


@pytest.mark.parametrize(
    "verb, argv",
    [
        ("plot", ["r", "--out", "x.gif"]),
        ("tokenizer", ["frobnicate"]),
        ("info", ["r", "--preset", "gpt2"]),
        ("prepare", ["x.txt", "--doc-separator", "("]),
    ],
)
def test_usage_errors_of_other_verbs_exit_2(cli_env, capsys, verb, argv):
    assert main([verb, *argv]) == 2
    _only_an_error_line(capsys)


@pytest.mark.parametrize("bug", [ValueError("a bug"), RuntimeError("a bug"), KeyError("a bug")])
def test_a_bug_is_not_swallowed(cli_env, capsys, monkeypatch, bug):
    def broken(argv):
        raise bug

    monkeypatch.setattr("gptlab.cli.info.run", broken)
    with pytest.raises(type(bug)):
        main(["info"])
    assert capsys.readouterr().err == ""


def test_a_gptlab_error_exits_1(cli_env, capsys, monkeypatch):
    def fails(argv):
        raise GptlabError("the disk is full")

    monkeypatch.setattr("gptlab.cli.info.run", fails)
    assert main(["info"]) == 1
    assert _only_an_error_line(capsys) == "error: the disk is full"


def test_a_bug_keeps_its_traceback_and_exit_status_1(cli_env):
    """Through the interpreter, as the console script runs main: Python prints the traceback."""
    script = (
        "import sys, gptlab.cli.info as info\n"
        "def broken(argv):\n"
        "    raise ValueError('a bug in info')\n"
        "info.run = broken\n"
        "from gptlab.cli.main import main\n"
        "sys.exit(main(['info']))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=cli_env
    )
    assert p.returncode == 1
    assert "Traceback (most recent call last)" in p.stderr
    assert p.stderr.strip().splitlines()[-1] == "ValueError: a bug in info"
