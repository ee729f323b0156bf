"""Staged batch/context, out-of-memory messages, schedule metrics and torch.compile scopes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model.gpt import GPT
from gptlab.runtime import make_runtime
from gptlab.train.config import RunConfig, TrainConfig
from gptlab.train.loop import train


def _with(cfg, **train_kw):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))


def _rt():
    return make_runtime("cpu", "float32")


def test_stage_shapes_follow_the_step():
    tc = TrainConfig(batch_size=8, stages=("100:seq_len=64", "0:seq_len=32", "200:batch_size=4"))
    assert tc.shape_at(0, 128, 1) == (8, 32, 1)
    assert tc.shape_at(150, 128, 1) == (8, 64, 1)
    assert tc.shape_at(250, 128, 1) == (4, 64, 1)
    tokens = TrainConfig(batch_size=4, global_batch_tokens=1024, stages=("10:seq_len=64",))
    assert tokens.shape_at(0, 128, 2) == (4, 128, 1)  # 1024 / (4 x 128 x 2)
    assert tokens.shape_at(10, 128, 2) == (4, 64, 2)  # same tokens per step, more micro-batches
    mixed = TrainConfig(batch_size=4, global_batch_tokens=1024, stages=("10:global_batch_size=16",))
    assert mixed.shape_at(10, 128, 1) == (4, 128, 4)  # the later key replaces the earlier


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        (("100",), "is not STEP:key=value"),
        (("100:seq_len",), "is not STEP:key=value"),
        (("x:seq_len=4",), "is not STEP:key=value"),
        (("100:lr=4",), "sets 'lr'"),
        (("100:batch_size=0",), "negative or zero"),
        (("5:seq_len=8", "5:batch_size=2"), "two stages at the same step"),
    ],
)
def test_malformed_stages_are_refused(stages, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(stages=stages)


def test_stage_longer_than_the_model_context_is_refused(tiny_run):
    with pytest.raises(ValueError, match="longer than model.seq_len 32"):
        RunConfig(model=tiny_run.model, train=TrainConfig(stages=("10:seq_len=64",)))


def test_stage_that_does_not_split_is_refused_before_work(tiny_run, locations):
    cfg = _with(tiny_run, global_batch_size=8, stages=("10:batch_size=3",))
    with pytest.raises(GptlabError, match="in the stage from step 10"):
        train(cfg, _rt(), locations)


def test_staged_run_changes_shape_and_resumes_across_a_stage_exactly(tiny_run, locations, tmp_path):
    """Short context first, then longer context with fewer sequences; a crash after the
    checkpoint at step 5 resumes across the stage start at 8 with identical losses."""
    base = _with(
        tiny_run,
        max_steps=12,
        eval_interval=5,
        log_interval=1,
        stages=("0:seq_len=16", "8:seq_len=32,batch_size=2"),
    )
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, dropout=0.1))
    full: dict[int, float] = {}
    result = train(
        _with(base, out_dir=str(tmp_path / "a")), _rt(), locations, on_step=full.__setitem__
    )
    tokens = {r["step"]: r["tokens"] for r in result.history if "train_loss" in r}
    assert tokens[5] == 5 * 8 * 16 and tokens[10] == 8 * 8 * 16 + 2 * 2 * 32

    class Crash(Exception):
        pass

    def crash_after_9(step, loss):
        if step == 9:
            raise Crash

    cfg_b = _with(base, out_dir=str(tmp_path / "b"))
    with pytest.raises(Crash):
        train(cfg_b, _rt(), locations, on_step=crash_after_9)
    resumed: dict[int, float] = {}
    train(cfg_b, _rt(), locations, resume=True, on_step=resumed.__setitem__)
    assert sorted(resumed) == list(range(6, 13))
    assert all(resumed[s] == full[s] for s in resumed)


def test_out_of_memory_names_the_knobs(tiny_run, locations, monkeypatch):
    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(GPT, "forward", no_memory)
    with pytest.raises(GptlabError, match=r"out of memory in training step 1 .*--train.batch_size"):
        train(tiny_run, _rt(), locations)


def test_cpu_allocation_failure_is_an_out_of_memory_message(tiny_run, locations, monkeypatch):
    def no_memory(self, *args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1")

    monkeypatch.setattr(GPT, "forward", no_memory)
    with pytest.raises(GptlabError, match="activation_checkpointing"):
        train(tiny_run, _rt(), locations)


def test_schedule_values_are_logged(tiny_run, locations):
    cfg = dataclasses.replace(
        tiny_run, optim=dataclasses.replace(tiny_run.optim, name="muon", wd_schedule="linear")
    )
    rows = [r for r in train(cfg, _rt(), locations).history if "train_loss" in r]
    assert all("weight_decay" in r and "muon_momentum" in r for r in rows)
    assert rows[-1]["weight_decay"] < rows[0]["weight_decay"]  # decays with the schedule
    assert rows[-1]["muon_momentum"] > rows[0]["muon_momentum"]  # warms up 0.85 -> 0.95


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scope", "optimizer"), [("model", "adamw"), ("blocks", "muon")], ids=["model", "blocks"]
)
def test_compiled_run_matches_eager_and_loads_uncompiled(
    tiny_run, locations, tmp_path, scope, optimizer
):
    """torch.compile on CPU (about 30 s each on 2 cores): the compiled run follows the eager
    one, and its checkpoint (no `_orig_mod.` keys) loads into a plain model."""
    from safetensors import safe_open

    from gptlab.checkpoint import load_model_from_checkpoint

    cfg = dataclasses.replace(tiny_run, optim=dataclasses.replace(tiny_run.optim, name=optimizer))
    cfg = _with(cfg, max_steps=6, eval_interval=6)
    eager = train(_with(cfg, out_dir=str(tmp_path / "eager")), _rt(), locations)
    compiled = train(
        _with(
            cfg,
            out_dir=str(tmp_path / "compiled"),
            compile=True,
            compile_scope=scope,
            compile_optimizer=optimizer == "muon",
        ),
        _rt(),
        locations,
    )
    assert compiled.last_val_loss == pytest.approx(eager.last_val_loss, abs=2e-3)
    with safe_open(str(compiled.run_dir / "latest" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k for k in keys)
    plain = load_model_from_checkpoint(compiled.run_dir / "latest")
    assert not any("_orig_mod" in k for k in plain.state_dict())
