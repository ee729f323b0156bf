"""The runner on tiny models: 2 variants x 2 seeds through real `gptlab train` processes, a rerun
that redoes nothing, a killed run resumed from its checkpoint, a crashing run recorded as failed
while the rest go on, another spec's folder refused, and submitit's local executor."""

import dataclasses
import json

import pytest

import gptlab.ablate
from gptlab.ablate.runner import RESULTS, execute, read_results
from gptlab.ablate.spec import parse_spec, plan
from gptlab.cli.main import main
from gptlab.errors import GptlabError
from gptlab.runtime import make_runtime
from gptlab.train.loop import train

pytestmark = pytest.mark.slow  # each run is a Python process that imports torch


@pytest.fixture
def env(tmp_path, monkeypatch, text_file):
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    return text_file


def _spec(text_file, **kw):
    base = {
        "preset": "tiny",
        "overrides": {"data.dataset": str(text_file), "train.eval_interval": 3},
    }
    return {
        "name": "tiny-lr",
        "base": base,
        "variants": {"low": {"optim.lr": 1e-3}, "high": {"optim.lr": 1e-2}},
        "seeds": [1, 2],
        "budget": {"steps": 6},
        "baseline": "low",
    } | kw


def _lines(out):
    return (out / RESULTS).read_text().splitlines()


def test_two_variants_two_seeds_then_a_rerun_redoes_nothing(env, tmp_path, capsys):
    out = tmp_path / "abl"
    progress = []
    records = gptlab.ablate.run(_spec(env), out, parallel=2, on_progress=progress.append)
    assert [(r["variant"], r["seed"], r["status"]) for r in records] == [
        ("low", 1, "done"), ("low", 2, "done"), ("high", 1, "done"), ("high", 2, "done"),
    ]  # fmt: skip
    for r in records:
        assert r["metric"] == "val_bpb" and r["value"] == r["final"]["val_bpb"] > 0
        assert r["final"]["step"] == 6 and r["final"]["params"] > 0 and r["git_commit"]
        assert r["config"]["train"]["seed"] == r["seed"] and "cpu" in r["machine"]
        assert (out / r["run_dir"] / "latest").is_dir()
    assert records[0]["value"] != records[1]["value"]  # the seeds differ
    assert progress[-1].startswith("4/4 finished, 0 running, 0 left")
    summary = json.loads((out / "summary.json").read_text())
    assert [v["variant"] for v in summary["variants"]] == ["low", "high"]
    assert (out / "report.html").is_file()

    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.jsonl")}
    assert main(["ablate", str(_write_spec(tmp_path, _spec(env))), "--out", str(out)]) == 0
    assert len(_lines(out)) == 4  # nothing new ran
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.jsonl")} == before
    assert "4/4 finished" in capsys.readouterr().out

    other = _spec(env, seeds=[3])
    with pytest.raises(GptlabError, match="holds the results of a different spec"):
        gptlab.ablate.run(other, out)


def _write_spec(tmp_path, spec):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_killed_run_resumes_from_its_checkpoint_and_a_crash_is_recorded(env, tmp_path):
    spec = parse_spec(_spec(env, seeds=[1], variants={"ok": {}, "broken": {}}, baseline="ok"))
    out = tmp_path / "abl"
    runs = plan(spec, out)
    ok, broken = runs
    broken = dataclasses.replace(  # a run that fails at start-up: its corpus is missing
        broken,
        config=dataclasses.replace(
            broken.config,
            data=dataclasses.replace(broken.config.data, dataset=str(tmp_path / "missing.txt")),
        ),
    )

    class Kill(Exception):
        pass

    def kill_at_4(step, loss):
        if step == 4:
            raise Kill

    with pytest.raises(Kill):  # the "killed" run: a checkpoint at step 3, no record
        train(
            ok.config, make_runtime("cpu", "float32"), gptlab_locations(tmp_path), on_step=kill_at_4
        )
    records = execute([ok, broken], out, metric="val_bpb")
    assert [r["status"] for r in records] == ["done", "failed"]
    assert records[0]["resumed"] and records[0]["final"]["step"] == 6
    rows = [json.loads(x) for x in (ok.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]  # step 3 not redone
    assert "missing.txt" in records[1]["error"] and "\n" not in records[1]["error"]
    assert read_results(out)[1]["status"] == "failed"


def gptlab_locations(tmp_path):
    from gptlab.data.registry import Locations

    return Locations(cache_dir=tmp_path / "cache", data_dir=None, allow_download=False)


def test_submitit_local_executor(env, tmp_path):
    pytest.importorskip("submitit")
    spec = parse_spec(_spec(env, seeds=[1], variants={"only": {}}, baseline="only"))
    out = tmp_path / "abl"
    (rec,) = execute(plan(spec, out), out, metric="val_loss", launcher="submitit")
    assert rec["status"] == "done" and rec["value"] == rec["final"]["val_loss"]
    assert (out / "submitit").is_dir()
