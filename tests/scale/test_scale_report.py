"""The scale report from a results fixture: fit on all but the held-out size, predict it."""

import json

import pytest

from gptlab.scale.fit import Law
from gptlab.scale.report import build_report
from gptlab.scale.spec import parse_spec
from gptlab.scale.sweep import plan

SPEC = {
    "name": "fixture",
    "base": {"preset": "tiny", "overrides": {"train.eval_steps": 1}},
    "auto": {"aspect_ratio": 16, "head_dim": 8, "ref_depth": 2},
    "depths": [1, 2, 3, 4],
    "holdout": 5,
    "param_data_ratios": [4, 16],
}
TRUE = Law(E=1.2, A=25.0, B=40.0, alpha=0.4, beta=0.3)


def _fixture(tmp_path, failed=()):
    """results.jsonl-style records and each run's metrics.jsonl, losses from TRUE."""
    spec = parse_spec(SPEC)
    records = []
    for r in plan(spec, tmp_path):
        if r.variant in failed:
            records.append(
                {
                    "variant": r.variant,
                    "seed": r.seed,
                    "status": "failed",
                    "error": "RuntimeError: boom",
                    "run_dir": str(r.run_dir),
                }
            )
            continue
        r.run_dir.mkdir(parents=True)
        rows = [
            {"step": 10, "train_loss": 3.0, "tokens": r.tokens // 2},
            {"step": 20, "val_loss": 9.9, "tokens": r.tokens // 2},  # not the last eval
            {
                "step": 40,
                "val_loss": float(TRUE.predict(r.params, r.tokens)),
                "val_bpb": 1.0,
                "tokens": r.tokens,
            },
        ]
        (r.run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        records.append(
            {"variant": r.variant, "seed": r.seed, "status": "done", "run_dir": str(r.run_dir)}
        )
    return spec, records


def test_report_fits_and_predicts_the_held_out_size(tmp_path):
    spec, records = _fixture(tmp_path)
    summary = build_report(spec, tmp_path, records)
    law = summary["fit"]["params"]
    assert law["alpha"] == pytest.approx(0.4, abs=0.02)
    assert law["beta"] == pytest.approx(0.3, abs=0.02)
    assert summary["fit"]["n_points"] == 8 and summary["params_convention"] == "non_embedding"
    assert [h["variant"] for h in summary["holdout"]] == ["d5-r4", "d5-r16"]
    for h in summary["holdout"]:
        assert h["actual"] == pytest.approx(float(TRUE.predict(h["params"], h["tokens"])))
        assert abs(h["error"]) < 1e-3
    assert summary["holdout_max_abs_error"] < 1e-3
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["holdout"] == summary["holdout"]
    md = (tmp_path / "report.md").read_text()
    assert "| d5-r16 |" in md and "Held-out prediction" in md and "N_opt ∝ C^" in md
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_failed_runs_are_reported_and_left_out(tmp_path):
    spec, records = _fixture(tmp_path, failed=("d1-r4", "d5-r16"))
    summary = build_report(spec, tmp_path, records)
    assert summary["fit"]["n_points"] == 7
    held = {h["variant"]: h for h in summary["holdout"]}
    assert "actual" not in held["d5-r16"] and "predicted" in held["d5-r16"]
    md = (tmp_path / "report.md").read_text()
    assert "2 run(s) failed" in md and "d1-r4 seed 1: RuntimeError: boom" in md
    assert "not trained" in md
