"""gptlab scale on the command line: the plan, one-line spec errors, and a tiny sweep end to end."""


import pytest
import yaml

from gptlab.cli.main import main

SPEC = {
    "name": "tiny-sweep",
    "base": {
        "preset": "tiny",
        "overrides": {"train.eval_steps": 1, "train.log_interval": 1000, "model.seq_len": 16},
    },
    "auto": {"aspect_ratio": 8, "head_dim": 8, "ref_depth": 1, "ref_batch_tokens": 64},
    "depths": [1, 2, 3],
    "holdout": 4,
    "param_data_ratios": [0.05, 0.15],
}


@pytest.fixture
def spec_file(cli_env, text_file):
    path = cli_env / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "dataset": str(text_file)}))
    return path


def test_dry_run_prints_the_plan(spec_file, capsys):
    assert main(["scale", str(spec_file), "--out", "sweep", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "d4-r0.15" in out and "(held out)" in out and "8 runs" in out
    assert not (spec_file.parent / "sweep").exists()  # nothing written


def test_bad_spec_is_one_line(cli_env, capsys):
    (cli_env / "bad.yaml").write_text(yaml.safe_dump({**SPEC, "holdout": 2}))
    assert main(["scale", "bad.yaml", "--out", "sweep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scale spec bad.yaml: holdout 2 must be larger" in err[0]


def test_report_without_results_is_refused(spec_file, capsys):
    assert main(["scale", str(spec_file), "--out", "empty", "--report"]) == 2
    assert "holds no results.jsonl" in capsys.readouterr().err
