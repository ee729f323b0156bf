"""Benchmarks during training (--train.eval_tasks): results at every eval in metrics.jsonl on a
fixed subset, and a missing data file or unknown task refused before any training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from tests.conftest import SHARED

from gptlab.data.registry import Locations
from gptlab.errors import ConfigError, GptlabError
from gptlab.runtime import make_runtime
from gptlab.train.loop import train


def _with(cfg, **train_kw):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))


def _evals(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


def test_perplexity_task_is_logged_at_every_eval(tiny_run, locations, text_file):
    cfg = _with(
        tiny_run, max_steps=20, eval_interval=10, eval_tasks=f"ppl:{text_file}", eval_tasks_limit=2
    )
    result = train(cfg, make_runtime("cpu", "float32"), locations)
    evals = _evals(result.run_dir)
    assert [r["step"] for r in evals] == [10, 20]
    key = f"eval/ppl:{text_file}/bpb"
    assert all(r[key] > 0 for r in evals) and evals[-1][key] < evals[0][key]  # it learns
    assert all("eval_tasks_s" in r for r in evals)  # recorded (its value is a duration)
    assert not any(k.endswith(("/n", "/chance")) for k in evals[0])  # bookkeeping stays out


@pytest.mark.skipif(
    not SHARED or not (Path(SHARED) / "gpt2_tokenizer").is_dir(),
    reason="set GPTLAB_DATA_DIR to the shared data folder",
)
def test_benchmarks_on_a_fixed_subset_every_eval(tiny_run, locations):
    data = dataclasses.replace(tiny_run.data, tokenizer="gpt2")
    cfg = _with(
        dataclasses.replace(tiny_run, data=data),
        max_steps=6,
        eval_interval=3,
        eval_tasks="arc_easy,piqa",
        eval_tasks_limit=16,
    )
    result = train(cfg, make_runtime("cpu", "float32"), locations)
    first, last = _evals(result.run_dir)
    for row in (first, last):
        for key in ("eval/arc_easy/acc", "eval/arc_easy/acc_norm", "eval/piqa/acc", "eval/score"):
            assert key in row, key
        assert 0 <= row["eval/piqa/acc"] <= 1 and row["eval/piqa/acc_stderr"] > 0


def test_missing_benchmark_data_is_refused_before_training(tiny_run, tmp_path):
    nowhere = Locations(
        cache_dir=tmp_path / "cache", data_dir=tmp_path / "empty", allow_download=False
    )
    cfg = _with(tiny_run, eval_tasks="hellaswag")
    with pytest.raises(GptlabError, match="no hellaswag data: put hellaswag/"):
        train(cfg, make_runtime("cpu", "float32"), nowhere)
    assert not Path(tiny_run.train.out_dir).exists()  # nothing trained, nothing written


def test_unknown_or_redundant_eval_tasks_are_config_errors(tiny_run, locations):
    with pytest.raises(ConfigError, match="unknown task 'hellaswog'"):
        train(_with(tiny_run, eval_tasks="hellaswog"), make_runtime("cpu", "float32"), locations)
    with pytest.raises(ConfigError, match="val is measured at every evaluation"):
        train(_with(tiny_run, eval_tasks="val"), make_runtime("cpu", "float32"), locations)
