"""gptlab scale on the command line: the plan, one-line spec errors, and a tiny sweep end to end."""

import json

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


# three runs (two sizes fitted on their evaluations, one held out): each a training process
@pytest.mark.slow
def test_sweep_end_to_end_then_report_again(cli_env, text_file, capsys):
    spec = {**SPEC, "dataset": str(text_file), "depths": [1, 2], "holdout": 3}
    spec |= {"param_data_ratios": [2.0], "points": "evals", "evals_per_run": 3}
    spec_file = cli_env / "e2e.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["scale", str(spec_file), "--out", "sweep"]) == 0
    out = capsys.readouterr().out
    assert "held out d3-r2: predicted val_loss" in out and "fit: E" in out
    sweep = cli_env / "sweep"
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["fit"]["n_points"] == 6 and len(summary["holdout"]) == 1
    assert all(r["status"] == "done" for r in summary["runs"])
    assert all(h["actual"] > 0 and "error" in h for h in summary["holdout"])
    records = [json.loads(x) for x in (sweep / "results.jsonl").read_text().splitlines()]
    assert {r["scale"]["depth"] for r in records} == {1, 2, 3}
    assert (sweep / "scaling.png").is_file() and (sweep / "report.md").is_file()
    (sweep / "report.md").unlink()
    assert main(["scale", str(spec_file), "--out", "sweep", "--report"]) == 0
    again = json.loads((sweep / "summary.json").read_text())
    assert again["holdout"] == summary["holdout"] and (sweep / "report.md").is_file()
    # a rerun trains nothing: every run is done
    assert main(["scale", str(spec_file), "--out", "sweep"]) == 0
    assert json.loads((sweep / "summary.json").read_text())["holdout"] == summary["holdout"]
