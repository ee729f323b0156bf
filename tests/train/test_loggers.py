"""Metric sinks: TensorBoard and W&B (offline) mirror metrics.jsonl; missing backends fail early."""

import dataclasses
import json
import sys
import time

import pytest

from gptlab.cli.main import main
from gptlab.errors import GptlabError
from gptlab.runtime import make_runtime
from gptlab.train.config import TrainConfig
from gptlab.train.loggers import build_loggers, close_loggers, scalars
from gptlab.train.loop import train

ROWS = [
    {"step": 5, "train_loss": 3.5, "lr": 1e-3, "skipped_steps": 0},
    {"step": 10, "train_loss": 3.0, "lr": 2e-3, "moe_load": [0.25, 0.75]},
    {"step": 10, "val_loss": 3.25, "val_bpb": 4.5},
]


def _read_tensorboard(run_dir):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_flattens_lists_and_keeps_only_numbers():
    row = {"step": 3, "loss": 2, "moe_load": [0.5, 0.5], "ok": True, "note": "x", "x": None}
    assert scalars(row) == {"loss": 2.0, "moe_load/0": 0.5, "moe_load/1": 0.5}


def test_tensorboard_writes_scalars_read_back_by_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    sinks = build_loggers(("tensorboard",), tmp_path, {})
    for row in ROWS:
        sinks[0].log(row, step=row["step"])
    close_loggers(sinks)
    got = _read_tensorboard(tmp_path)
    assert got["train_loss"] == [(5, 3.5), (10, 3.0)]
    assert got["val_loss"] == [(10, 3.25)]
    assert got["moe_load/1"] == [(10, 0.75)]
    assert got["lr"][1] == (10, pytest.approx(2e-3))
    assert "step" not in got


def test_tensorboard_resume_hides_events_after_the_checkpoint(tmp_path):
    """A crash after the step-10 checkpoint left a step-15 row; the resumed run rewrites it."""
    pytest.importorskip("tensorboard")
    first = build_loggers(("tensorboard",), tmp_path, {})
    for step, loss in ((5, 3.5), (10, 3.0), (15, 9.9)):
        first[0].log({"step": step, "train_loss": loss}, step=step)
    close_loggers(first)
    resumed = build_loggers(("tensorboard",), tmp_path, {}, start_step=10)
    resumed[0].log({"step": 15, "train_loss": 2.5}, step=15)
    close_loggers(resumed)
    assert _read_tensorboard(tmp_path)["train_loss"] == [(5, 3.5), (10, 3.0), (15, 2.5)]


def test_wandb_offline_writes_its_run_under_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    sinks = build_loggers(
        ("wandb",), run_dir, {"train": {"seed_marker": 4242}}, wandb_project="gptlab-test"
    )
    for row in ROWS:
        sinks[0].log(row, step=row["step"])
    sinks[0].close()  # directly: close_loggers would only log a failure
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (log_file,) = offline.glob("run-*.wandb")
    # wandb-core (a separate process) may still be flushing when finish() returns: seen under
    # load with wandb 0.31, so poll briefly. The names are plain strings in its protobuf log.
    deadline, missing = time.monotonic() + 10, [b"?"]
    while missing and time.monotonic() < deadline:
        data = log_file.read_bytes()
        missing = [k for k in (b"val_loss", b"moe_load/1", b"seed_marker") if k not in data]
        time.sleep(0.05 if missing else 0)
    assert not missing, (missing, len(data))


@pytest.mark.parametrize(
    "logger, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")]
)
def test_missing_backend_names_the_extra(tmp_path, monkeypatch, logger, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(GptlabError, match=rf"pip install 'gptlab\[{logger}\]'"):
        build_loggers((logger,), tmp_path, {})


def test_a_failed_start_closes_the_sinks_already_open(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from gptlab.train import loggers

    closed = []
    monkeypatch.setattr(loggers.TensorBoardLogger, "close", lambda self: closed.append(1))
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(GptlabError, match="wandb"):
        build_loggers(("tensorboard", "wandb"), tmp_path, {})
    assert closed == [1]


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"loggers": ("tensorbord",)}, "unknown logger 'tensorbord'"),
        ({"loggers": ("wandb", "wandb")}, "names a logger twice"),
        ({"wandb_project": " "}, "train.wandb_project is empty"),
        ({"wandb_mode": "cloud"}, "train.wandb_mode 'cloud'"),
    ],
)
def test_config_rejects_bad_logger_settings(kw, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**kw)


def test_cli_rejects_an_unknown_logger(cli_env, capsys):
    assert main(["train", "--preset", "tiny", "--train.loggers", "mlflow"]) == 2
    assert "--train.loggers" in capsys.readouterr().err


def _with(cfg, **train_kw):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))


def test_missing_backend_fails_before_step_0(tiny_run, locations, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    steps = []
    with pytest.raises(GptlabError, match=r"gptlab\[wandb\]"):
        train(
            _with(tiny_run, loggers=("wandb",)),
            make_runtime("cpu", "float32"),
            locations,
            on_step=lambda step, loss: steps.append(step),
        )
    assert steps == []


def test_training_mirrors_metrics_jsonl_to_tensorboard(tiny_run, locations):
    """End to end: the tiny preset with loggers=('tensorboard',); jsonl and events agree."""
    pytest.importorskip("tensorboard")
    result = train(
        _with(tiny_run, loggers=("tensorboard",)), make_runtime("cpu", "float32"), locations
    )
    rows = [json.loads(ln) for ln in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    got = _read_tensorboard(result.run_dir)
    for key in ("train_loss", "val_loss", "lr"):
        want = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r]
        assert want and got[key] == want, key
