"""Health checks (NaN skipping, spikes, divergence), MFU/memory metrics, memory estimate,
activation checkpointing and global-batch derivation."""

import dataclasses
import math

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model.accounting import count_params
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.optim.build import build_optimizer
from gptlab.optim.config import OptimConfig
from gptlab.runtime import Runtime, make_runtime
from gptlab.train.config import RunConfig, TrainConfig
from gptlab.train.health import HealthMonitor
from gptlab.train.loop import train
from gptlab.train.memory import (
    available_memory,
    enable_activation_checkpointing,
    estimate_memory,
    memory_plan,
    saved_activation_bytes,
    score_keeping_layers,
)


def _with(cfg, **train_kw):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))


def _nan_at(monkeypatch, calls: set[int]):
    """Make GPT.forward return a NaN training loss on the given (0-based) training calls."""
    original = GPT.forward
    counter = {"n": 0}

    def forward(self, idx, targets=None, **kw):
        out = original(self, idx, targets, **kw)
        if targets is None or not self.training:
            return out
        n = counter["n"]
        counter["n"] += 1
        if n in calls:
            loss, stats = out
            return loss * math.nan, stats
        return out

    monkeypatch.setattr(GPT, "forward", forward)


def test_nan_steps_are_skipped_and_counted(tiny_run, locations, monkeypatch):
    _nan_at(monkeypatch, {2, 3, 12})  # steps 3, 4 and 13; logs every 5
    result = train(_with(tiny_run, log_interval=5), make_runtime("cpu", "float32"), locations)
    logs = [r for r in result.history if "train_loss" in r]
    assert [r["skipped_steps"] for r in logs] == [2, 2, 3, 3]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["grad_norm"]) for r in logs)
    assert math.isfinite(result.last_val_loss)  # the weights never saw the NaN


def test_divergence_stops_with_a_clear_message(tiny_run, locations, monkeypatch):
    _nan_at(monkeypatch, set(range(5, 100)))
    with pytest.raises(GptlabError, match="training diverged: 3 steps in a row.*--optim.lr"):
        train(_with(tiny_run, max_bad_steps=3), make_runtime("cpu", "float32"), locations)


def test_log_rows_carry_grad_norm_mfu_and_memory(tiny_run, locations):
    result = train(tiny_run, make_runtime("cpu", "float32"), locations)
    row = next(r for r in result.history if "train_loss" in r)
    assert row["grad_norm"] > 0 and 0 < row["mfu"] < 1 and row["peak_mem_gb"] > 0


def test_spike_warnings():
    h = HealthMonitor(warmup_steps=5)
    for _ in range(10):
        assert h.record_good(2.0, 1.0) == []
    warnings = h.record_good(4.0, 10.0)
    assert len(warnings) == 2 and "loss spike" in warnings[0] and "gradient-norm" in warnings[1]
    assert not h.record_bad() and h.skipped_steps == 1


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"mlp": "swiglu", "pos_emb": "rope", "norm": "rmsnorm", "n_kv_head": 2},
        {"n_embd": 96, "seq_len": 48, "vocab_size": 500},
        {"n_embd": 32, "seq_len": 256},  # long context: in bf16 the saved scores dominate
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memory_estimate_within_30_percent_of_measured(kw, dtype):
    cfg = ModelConfig(
        **{"n_layer": 2, "n_head": 4, "n_embd": 64, "seq_len": 32, "vocab_size": 65, **kw}
    )
    model = GPT(cfg)
    B = 8
    x = torch.randint(cfg.vocab_size, (B, cfg.seq_len))
    y = torch.randint(cfg.vocab_size, (B, cfg.seq_len))
    rt = make_runtime("cpu", dtype)
    optimizer = build_optimizer(model.named_parameters(), OptimConfig())
    activations = saved_activation_bytes(model, x, y, rt.autocast)
    with rt.autocast():
        loss, _ = model(x, y)
    loss.backward()
    optimizer.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    opt = sum(
        t.numel() * t.element_size()
        for st in optimizer.state.values()
        for t in st.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    measured = weights + grads + opt + activations
    bf16 = dtype == "bfloat16"
    layers = score_keeping_layers(model, rt, cfg.seq_len)
    est = estimate_memory(cfg, count_params(model).total, B, autocast=bf16, score_layers=layers)
    assert est.total == pytest.approx(measured, rel=0.3)
    assert est.activations == pytest.approx(activations, rel=0.3)


@pytest.mark.parametrize(
    ("extra", "bf16_layers"), [({}, 2), ({"window": 4, "window_pattern": "SL"}, 1)]
)
def test_memory_plan_asks_the_model_which_layers_keep_attention_scores(extra, bf16_layers):
    """Only layers running the CPU bf16 kernel keep their scores, as the model reports them; the
    plan built from the config alone (a meta model) says the same as the trained model."""
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=32, vocab_size=40, **extra)
    model = GPT(cfg)
    run = RunConfig(model=cfg, train=TrainConfig(batch_size=4))
    cpu = torch.device("cpu")
    fp32, bf16 = Runtime(cpu, torch.float32), Runtime(cpu, torch.bfloat16)
    assert score_keeping_layers(model, fp32, 32) == 0
    assert score_keeping_layers(model, bf16, 32) == bf16_layers
    n = count_params(model).total
    for rt, layers in ((fp32, 0), (bf16, bf16_layers)):
        expected = estimate_memory(cfg, n, 4, autocast=rt is bf16, score_layers=layers)
        expected_line = expected.describe(available_memory(cpu))
        assert memory_plan(run, rt, n, model=model) == expected_line
        assert memory_plan(run, rt, n) == expected_line  # a meta model built from cfg.model


def test_activation_checkpointing_saves_memory_and_keeps_results():
    cfg = ModelConfig(n_layer=3, n_head=2, n_embd=32, seq_len=16, vocab_size=40)
    torch.manual_seed(0)
    a = GPT(cfg)
    b = GPT(cfg)
    b.load_state_dict(a.state_dict())
    enable_activation_checkpointing(b)
    x, y = torch.randint(40, (4, 16)), torch.randint(40, (4, 16))
    assert saved_activation_bytes(b, x, y) < 0.6 * saved_activation_bytes(a, x, y)
    la, _ = a(x, y)
    lb, _ = b(x, y)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name
    assert list(a.state_dict()) == list(b.state_dict())  # names unchanged: checkpoints load


def test_global_batch_derives_accumulation():
    tc = TrainConfig(batch_size=8, global_batch_size=32)
    assert tc.accumulation(seq_len=64, world_size=1) == 4
    assert tc.accumulation(seq_len=64, world_size=2) == 2
    assert TrainConfig(batch_size=8, global_batch_tokens=8 * 64 * 3).accumulation(64, 1) == 3
    with pytest.raises(
        ValueError, match="global_batch_size 32 is not a multiple of batch_size 8 x world size 3"
    ):
        tc.accumulation(seq_len=64, world_size=3)
    with pytest.raises(ValueError, match="both set"):
        TrainConfig(global_batch_size=8, global_batch_tokens=512)


def test_global_batch_equals_explicit_accumulation(tiny_run, locations, tmp_path):
    a = _with(tiny_run, batch_size=4, grad_accum_steps=2, max_steps=6, out_dir=str(tmp_path / "a"))
    b = _with(tiny_run, batch_size=4, global_batch_size=8, max_steps=6, out_dir=str(tmp_path / "b"))
    rt = make_runtime("cpu", "float32")
    assert train(a, rt, locations).last_val_loss == train(b, rt, locations).last_val_loss


def test_keep_last_n_checkpoints(tiny_run, locations, tmp_path):
    from pathlib import Path

    cfg = _with(tiny_run, max_steps=20, eval_interval=5, keep_checkpoints=2)
    train(cfg, make_runtime("cpu", "float32"), locations)
    run = Path(cfg.train.out_dir)
    assert sorted(p.name for p in run.glob("step_*")) == ["step_0000015", "step_0000020"]
    latest = run / "latest" / "model.safetensors"
    assert latest.read_bytes() == (run / "step_0000020" / "model.safetensors").read_bytes()
    assert latest.read_bytes() != (run / "step_0000015" / "model.safetensors").read_bytes()


def test_cpu_runtime_keeps_freed_host_memory():
    """On glibc, CPU runs tell malloc to reuse freed memory (no mmap, no trim) instead of
    faulting in fresh pages for every step's activations; elsewhere it is a no-op."""
    import platform

    from gptlab.runtime import keep_freed_host_memory

    assert keep_freed_host_memory() == (platform.system() == "Linux"
                                        and platform.libc_ver()[0] == "glibc")  # fmt: skip
