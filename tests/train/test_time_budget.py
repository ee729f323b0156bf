"""train.max_seconds: a wall-time budget that stops training (final eval + checkpoint), drives
the LR schedule, excludes evaluation time and survives resume. A fake clock, advanced one second
per optimizer step, stands in for the loop's time.perf_counter (only the loop's: the MFU probe
keeps the real one), so nothing here depends on real timings."""

import dataclasses
import json
import types

import pytest

from gptlab.optim.config import OptimConfig
from gptlab.optim.schedule import lr_at, schedule_step
from gptlab.runtime import make_runtime
from gptlab.train import loop
from gptlab.train.config import TrainConfig
from gptlab.train.loop import train


class FakeClock:
    """time.perf_counter that only moves when tick() is called (once per step, from on_step)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, step: int, loss: float) -> None:
        self.now += 1.0


def _budgeted(cfg, out_dir, **train_kw):
    tc = dataclasses.replace(
        cfg.train, max_steps=1000, max_seconds=11.5, eval_interval=1000, out_dir=str(out_dir)
    )
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, **train_kw))


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_schedule_step_follows_the_budget_that_binds_first():
    assert schedule_step(10, 100, 999.0, 0.0) == 10.0  # no time budget: the step itself
    assert schedule_step(10, 100, 5.0, 10.0) == 50.0  # half the time gone: half the schedule
    assert schedule_step(80, 100, 5.0, 10.0) == 80.0  # steps ahead of time
    assert schedule_step(10, 100, 50.0, 10.0) == 100.0  # capped at the end of the schedule
    # warmup counts steps; after it the decay's progress is the fraction of the time spent
    assert schedule_step(3, 100, 9.0, 10.0, warmup_steps=10) == 3.0
    assert schedule_step(12, 100, 5.0, 10.0, warmup_steps=10) == 10 + 0.5 * 90


def test_a_fractional_warmup_step_never_exceeds_the_peak_lr():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=30)
    assert lr_at(29.5, 1000, cfg) == pytest.approx(1e-3)
    assert lr_at(14.0, 1000, cfg) == pytest.approx(1e-3 * 15 / 30)  # integer steps unchanged


def test_negative_max_seconds_is_rejected():
    with pytest.raises(ValueError, match="train.max_seconds"):
        TrainConfig(max_seconds=-1.0)


def test_training_stops_at_the_time_budget_with_a_final_eval(
    tiny_run, locations, tmp_path, monkeypatch
):
    clock = FakeClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock))
    cfg = _budgeted(tiny_run, tmp_path / "run")
    result = train(cfg, make_runtime("cpu", "float32"), locations, on_step=clock.tick)
    assert result.step == 12  # 11 s < 11.5 s after step 11, 12 s after step 12
    rows = _rows(tmp_path / "run")
    evals = [r for r in rows if "val_loss" in r]
    assert [(r["step"], r["train_time_s"]) for r in evals] == [(12, 12.0)]
    assert (tmp_path / "run" / "latest" / "model.safetensors").is_file()
    W = cfg.optim.warmup_steps  # 5: steps 0-4 warm up by step count
    logged = {r["step"]: r["lr"] for r in rows if "lr" in r}  # a row logs the step before it
    assert logged[5] == pytest.approx(lr_at(4, 1000, cfg.optim))
    # step index 9 starts after 9 s of 11.5: the decay is 9 / 11.5 of the way through
    assert logged[10] == pytest.approx(lr_at(W + 9 / 11.5 * (1000 - W), 1000, cfg.optim))


def test_the_time_budget_survives_resume(tiny_run, locations, tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock))
    cfg = _budgeted(tiny_run, tmp_path / "run", eval_interval=4)

    class Crash(Exception):
        pass

    def crash_at_6(step, loss):
        clock.tick(step, loss)
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, make_runtime("cpu", "float32"), locations, on_step=crash_at_6)
    clock.now = 5.0  # a new process: its clock starts anywhere
    result = train(cfg, make_runtime("cpu", "float32"), locations, resume=True, on_step=clock.tick)
    assert result.step == 12  # 4 s from the checkpoint at step 4, then 8 more steps
    evals = [r for r in _rows(tmp_path / "run") if "val_loss" in r]
    assert [(r["step"], r["train_time_s"]) for r in evals] == [(4, 4.0), (8, 8.0), (12, 12.0)]


class BusyClock(FakeClock):
    """A clock that moves on every reading, so time passes between any two lines of the loop
    (logging, the next step's start), not only inside steps."""

    def __call__(self) -> float:
        self.now += 0.3
        return self.now


def test_the_budget_running_out_between_steps_still_ends_with_an_eval(
    tiny_run, locations, tmp_path, monkeypatch
):
    """The time is up only when a step has just finished: a budget crossed between the check and
    the next step's start must not end the run without its final evaluation and checkpoint."""
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=BusyClock()))
    cfg = _budgeted(tiny_run, tmp_path / "run", max_seconds=3.0)
    result = train(cfg, make_runtime("cpu", "float32"), locations)
    evals = [r for r in _rows(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [result.step]
    assert 0 < result.step < 1000

    again = train(cfg, make_runtime("cpu", "float32"), locations, resume=True)
    assert again.step == result.step  # the budget was spent: resuming trains nothing more
    assert [r["step"] for r in _rows(tmp_path / "run") if "val_loss" in r] == [result.step]
