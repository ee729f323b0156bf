"""gptlab.cli.launch.forked: runs forked from the fork server behave like `python -m gptlab`
processes: the launcher's environment and directory at launch, output in the log, exit status."""

from __future__ import annotations

import sys
import time

from gptlab.cli.launch import forked


def _wait(handle, timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (rc := handle.poll()) is None:
        assert time.monotonic() < deadline, "the forked run did not finish"
        time.sleep(0.1)
    return rc


def test_forked_runs_train_and_fail_like_the_cli(cli_env, text_file, monkeypatch):
    cmd = [sys.executable, "-m", "gptlab"]
    log = cli_env / "train.log"
    ok = forked([*cmd, "train", "--preset", "tiny", "--data.dataset", str(text_file),
                 "--train.max_steps", "6", "--train.out_dir", "run"], log)  # fmt: skip
    assert _wait(ok) == 0
    assert (cli_env / "run" / "latest").is_dir()  # relative to the launcher's directory
    assert "best val loss" in log.read_text()

    monkeypatch.chdir(cli_env / "run")  # a later launch sees the directory of its moment
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    bad = forked([*cmd, "train", "--preset", "no_such_preset"], cli_env / "bad.log")
    assert _wait(bad) == 2
    lines = [ln for ln in (cli_env / "bad.log").read_text().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "no_such_preset" in lines[-1]


def test_a_forked_run_can_be_stopped(cli_env, text_file):
    cmd = [sys.executable, "-m", "gptlab", "train", "--preset", "tiny", "--data.dataset",
           str(text_file), "--train.max_steps", "100000", "--train.out_dir", "long"]  # fmt: skip
    handle = forked(cmd, cli_env / "long.log")
    time.sleep(1.0)
    handle.stop()
    assert handle.poll() is not None  # no process left behind
