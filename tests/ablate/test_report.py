"""The report, built from a hand-made results.jsonl (and metrics.jsonl per run) without training:
numbers match the statistics, failed runs are listed, plots are embedded, the CLI rebuilds it."""

import json

import pytest
from scipy import stats as sps

from gptlab.ablate.report import build_report
from gptlab.ablate.stats import holm
from gptlab.cli.main import main

VALUES = {"base": [1.60, 1.62, 1.61], "fast": [1.50, 1.52, 1.51], "same": [1.61, 1.59, 1.63]}


@pytest.fixture
def ablation(tmp_path):
    """An output folder as the runner leaves it: spec.json, results.jsonl, runs/*/metrics.jsonl,
    with one failed run."""
    out = tmp_path / "abl"
    spec = {"name": "fx", "metric": "val_bpb", "baseline": "base", "seeds": [1, 2, 3]}
    (out).mkdir()
    (out / "spec.json").write_text(json.dumps(spec))
    lines = []
    for variant, values in VALUES.items():
        for seed, v in enumerate(values, start=1):
            run_dir = out / "runs" / variant / f"seed{seed}"
            run_dir.mkdir(parents=True)
            rows = [
                {"step": s, "val_loss": v + 1 / s, "val_bpb": v + 1 / s, "tokens": 100 * s,
                 "train_time_s": 0.5 * s + 0.01 * seed}
                for s in (10, 20, 30)
            ]  # fmt: skip
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            final = {"val_bpb": v, "tokens_per_s": 1000.0 + seed, "params": 1234, "step": 30,
                     "train_time_s": 15.0}  # fmt: skip
            lines.append({"variant": variant, "seed": seed, "status": "done", "metric": "val_bpb",
                          "value": v, "run_dir": f"runs/{variant}/seed{seed}", "final": final,
                          "wall_s": 20.0, "git_commit": "abc",
                          "machine": {"cpu": "test"}})  # fmt: skip
    lines.append({"variant": "same", "seed": 4, "status": "failed", "metric": "val_bpb",
                  "value": None, "run_dir": "runs/same/seed4", "error": "error: boom"})  # fmt: skip
    text = "".join(json.dumps(x) + "\n" for x in lines)
    (out / "results.jsonl").write_text(text + '{"variant": "cut off mid-wr')  # a killed write
    return out


def test_summary_numbers_match_scipy(ablation):
    summary = build_report(ablation)
    rows = {r["variant"]: r for r in summary["variants"]}
    assert list(rows) == ["base", "fast", "same"] and summary["baseline"] == "base"
    raw = {
        v: sps.ttest_ind(VALUES[v], VALUES["base"], equal_var=False).pvalue
        for v in ("fast", "same")
    }
    adjusted = holm([raw["fast"], raw["same"]])
    for v, p_holm in zip(("fast", "same"), adjusted, strict=True):
        assert rows[v]["p_value"] == pytest.approx(raw[v])
        assert rows[v]["p_holm"] == pytest.approx(p_holm)
    assert rows["fast"]["diff"] == pytest.approx(-0.10)
    assert rows["fast"]["verdict"].startswith("better, p = ")
    assert rows["same"]["verdict"].startswith("no detectable difference at n = 3")
    assert rows["base"]["verdict"] == "baseline" and rows["base"]["n"] == 3
    assert rows["same"]["n_failed"] == 1 and rows["fast"]["params"] == 1234
    assert rows["fast"]["tokens_per_s"] == pytest.approx(1002.0)
    assert summary["failed"] == [{"variant": "same", "seed": 4, "error": "error: boom"}]
    assert json.loads((ablation / "summary.json").read_text())["runs"] == 10


def test_report_files(ablation):
    build_report(ablation)
    md = (ablation / "report.md").read_text()
    assert "| fast | 3 |" in md and "better, p = " in md
    assert "## Failed runs" in md and "same seed 4: error: boom" in md
    assert "![val_bpb curves over seeds](curves.png)" in md
    for png in ("curves.png", "bars.png"):
        assert (ablation / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (ablation / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_cli_rebuilds_the_report(ablation, capsys):
    assert main(["ablate", "--report", str(ablation)]) == 0
    assert (ablation / "report.html").is_file()


def test_report_of_a_folder_without_results(tmp_path, capsys):
    assert main(["ablate", "--report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "holds no results.jsonl" in err and err.count("\n") == 1
