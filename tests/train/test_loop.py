import dataclasses
import json
import math
from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.model.config import MoEConfig
from gptlab.runtime import make_runtime
from gptlab.train.loop import train


def _runtime():
    return make_runtime("cpu", "float32")


def _with(cfg, **train_kw):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))


def test_loss_falls_and_outputs_are_written(tiny_run, locations):
    cfg = _with(tiny_run, max_steps=40, eval_interval=20)
    result = train(cfg, _runtime(), locations)
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert losses[-1] < losses[0] and len(vals) == 2
    assert all(k in rows[0] for k in ("step", "lr", "ms_per_step", "tokens_per_s"))
    for name in ("latest", "best"):
        assert (result.run_dir / name / "model.safetensors").is_file()
        assert (result.run_dir / name / "tokenizer.json").is_file()
    stored = json.loads((result.run_dir / "config.json").read_text())
    assert (
        stored["model"]["vocab_size"]
        == json.loads((result.run_dir / "latest" / "config.json").read_text())["config"]["model"][
            "vocab_size"
        ]
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resume_reproduces_uninterrupted_run(tiny_run, locations, tmp_path, dtype):
    """Crash after step 10 (a checkpoint), resume, and get exactly the same losses to step 20."""
    base = dataclasses.replace(tiny_run, model=dataclasses.replace(tiny_run.model, dropout=0.1))
    rt = make_runtime("cpu", dtype)
    full = {}
    train(
        _with(base, out_dir=str(tmp_path / "a")),
        rt,
        locations,
        on_step=lambda s, loss: full.__setitem__(s, loss),
    )

    class Crash(Exception):
        pass

    def crash_after_12(step, loss):
        if step == 12:
            raise Crash

    cfg_b = _with(base, out_dir=str(tmp_path / "b"))
    with pytest.raises(Crash):
        train(cfg_b, rt, locations, on_step=crash_after_12)
    resumed = {}
    train(cfg_b, rt, locations, resume=True, on_step=lambda s, loss: resumed.__setitem__(s, loss))
    assert sorted(resumed) == list(range(11, 21))
    assert all(resumed[s] == full[s] for s in resumed)  # bit-exact on CPU
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20]  # no rows from the crash


def _snapshot(root):
    return sorted((str(p), p.stat().st_mtime_ns) for p in Path(root).rglob("*"))


def test_fresh_run_refuses_existing_run_dir(tiny_run, locations):
    train(tiny_run, _runtime(), locations)
    before = _snapshot(tiny_run.train.out_dir)
    with pytest.raises(GptlabError, match="already holds a run"):
        train(tiny_run, _runtime(), locations)
    assert _snapshot(tiny_run.train.out_dir) == before  # nothing touched


def test_resume_refuses_architecture_change(tiny_run, locations):
    train(tiny_run, _runtime(), locations)
    wider = dataclasses.replace(tiny_run, model=dataclasses.replace(tiny_run.model, n_embd=64))
    with pytest.raises(GptlabError, match="model.n_embd is 32 in the checkpoint but 64"):
        train(wider, _runtime(), locations, resume=True)


def test_resume_without_checkpoint(tiny_run, locations):
    with pytest.raises(GptlabError, match="cannot resume"):
        train(tiny_run, _runtime(), locations, resume=True)


def test_text_shorter_than_a_window(tmp_path, tiny_run, locations):
    short = tmp_path / "short.txt"
    short.write_text("just a few words here")
    cfg = dataclasses.replace(tiny_run, data=dataclasses.replace(tiny_run.data, dataset=str(short)))
    with pytest.raises(GptlabError, match="fewer than one window"):
        train(cfg, _runtime(), locations)
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_grad_accumulation_matches_bigger_batch(tiny_run, locations, tmp_path):
    """2 micro-batches of 4 see the same 8 windows as one batch of 8: same update, same loss."""
    a = _with(tiny_run, batch_size=8, grad_accum_steps=1, max_steps=6, out_dir=str(tmp_path / "a"))
    b = _with(
        tiny_run,
        batch_size=4,
        grad_accum_steps=2,
        max_steps=6,
        eval_steps=4,
        out_dir=str(tmp_path / "b"),
    )  # same 16 eval windows as (8 x 2)
    ra, rb = train(a, _runtime(), locations), train(b, _runtime(), locations)
    assert rb.last_val_loss == pytest.approx(ra.last_val_loss, abs=1e-5)


def test_float16_autocast_uses_grad_scaler(tiny_run, locations):
    rt = make_runtime("cpu", "float16")
    assert rt.needs_grad_scaler
    result = train(_with(tiny_run, max_steps=20), rt, locations)
    losses = [r["train_loss"] for r in result.history if "train_loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_moe_and_mtp_statistics_reach_the_metrics(tiny_run, locations):
    model = dataclasses.replace(
        tiny_run.model, moe=MoEConfig(n_experts=4, top_k=2, capacity_factor=1.0), mtp_heads=1
    )
    cfg = _with(dataclasses.replace(tiny_run, model=model), max_steps=10, eval_interval=10)
    result = train(cfg, _runtime(), locations)
    row = next(r for r in result.history if "train_loss" in r)
    assert row["moe_aux_loss"] >= 1.0 - 1e-6  # E * sum f P is 1 when perfectly balanced
    assert 0.0 <= row["moe_drop_frac"] < 1.0 and row["moe_z_loss"] > 0
    assert len(row["moe_load"]) == 4 and abs(sum(row["moe_load"]) - 1) < 1e-3
    assert row["mtp_ce_1"] > 0
    evals = [r for r in result.history if "val_loss" in r]
    assert evals[-1]["train_time_s"] <= evals[-1]["elapsed_s"]


def test_flex_cannot_train_on_cpu(tiny_run, locations):
    model = dataclasses.replace(tiny_run.model, attn_backend="flex")
    with pytest.raises(ValueError, match="no backward pass on a CPU"):
        train(dataclasses.replace(tiny_run, model=model), _runtime(), locations)


def test_resume_with_muon_reproduces_uninterrupted_run(tiny_run, locations, tmp_path):
    """Muon + WSD + cautious decay: crash at step 12, resume from step 10, same losses to 20."""
    optim = dataclasses.replace(
        tiny_run.optim,
        name="muon",
        cautious_wd=True,
        schedule="wsd",
        muon_momentum_warmup_steps=15,
        warmup_steps=min(tiny_run.optim.warmup_steps, 5),
    )
    base = dataclasses.replace(tiny_run, optim=optim)
    full = {}
    train(
        _with(base, out_dir=str(tmp_path / "a")),
        _runtime(),
        locations,
        on_step=lambda s, loss: full.__setitem__(s, loss),
    )

    class Crash(Exception):
        pass

    def crash_after_12(step, loss):
        if step == 12:
            raise Crash

    cfg_b = _with(base, out_dir=str(tmp_path / "b"))
    with pytest.raises(Crash):
        train(cfg_b, _runtime(), locations, on_step=crash_after_12)
    resumed = {}
    train(
        cfg_b,
        _runtime(),
        locations,
        resume=True,
        on_step=lambda s, loss: resumed.__setitem__(s, loss),
    )
    assert sorted(resumed) == list(range(11, 21))
    assert all(resumed[s] == full[s] for s in resumed)  # bit-exact on CPU


def test_resume_with_other_max_steps_warns_that_the_schedule_changes(tiny_run, locations, caplog):
    train(_with(tiny_run, max_steps=10, eval_interval=10), _runtime(), locations)
    with caplog.at_level("WARNING"):
        train(_with(tiny_run, max_steps=16, eval_interval=8), _runtime(), locations, resume=True)
    warnings = [r.getMessage() for r in caplog.records if "max_steps" in r.getMessage()]
    assert len(warnings) == 1
    assert "from 10 to 16" in warnings[0] and "schedule" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same length again: nothing to say
        train(_with(tiny_run, max_steps=16, eval_interval=8), _runtime(), locations, resume=True)
    assert not [r for r in caplog.records if "max_steps" in r.getMessage()]


def test_a_data_vocab_override_is_logged(tiny_run, locations, caplog):
    with caplog.at_level("INFO"):
        train(tiny_run, _runtime(), locations)
    lines = [r.getMessage() for r in caplog.records if "model.vocab_size" in r.getMessage()]
    assert len(lines) == 1 and f"{tiny_run.model.vocab_size} ->" in lines[0]


def test_resume_after_a_row_cut_off_mid_write(tiny_run, locations):
    train(_with(tiny_run, max_steps=10, eval_interval=10), _runtime(), locations)
    metrics = Path(tiny_run.train.out_dir) / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 11, "train_lo')  # the process died mid-write
    train(_with(tiny_run, max_steps=12, eval_interval=6), _runtime(), locations, resume=True)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 12]
