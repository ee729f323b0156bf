"""`gptlab plot`: loss curves from hand-written metrics.jsonl files; bad input is one line."""

import json
import sys

import pytest

from gptlab.cli.main import main
from gptlab.cli.plot import _wall_clock, load_run, tokens_per_step

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, batch_size=8, seq_len=32, steps=40, with_config=True, base_loss=4.0):
    """A run as gptlab train leaves it: train rows every 5 steps, eval rows every 10, and a
    resume at step 20 (its clock restarts at 0)."""
    run_dir.mkdir(parents=True)
    rows = []
    for step in range(5, steps + 1, 5):
        t = 0.1 * step if step <= 20 else 0.1 * (step - 20) + 0.5
        loss = base_loss / (1 + 0.05 * step)
        rows.append({"step": step, "train_loss": loss, "lr": 1e-3, "elapsed_s": t})
        if step % 10 == 0:
            val = {"step": step, "val_loss": loss + 0.1, "elapsed_s": t + 0.05}
            rows.append({**val, "train_eval_loss": loss, "val_bpb": 1.5, "train_time_s": t})
    rows[3]["moe_load"] = [0.5, 0.5]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if with_config:
        cfg = {
            "train": {"batch_size": batch_size, "grad_accum_steps": 2},
            "model": {"seq_len": seq_len},
        }
        (run_dir / "config.json").write_text(json.dumps(cfg))
    return run_dir


def _png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    return data


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_two_runs_make_a_three_panel_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _write_run(tmp_path / "a")
    b = _write_run(tmp_path / "b", batch_size=16, base_loss=3.5)
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert len(_png(out)) > 20_000
    assert "wrote" in capsys.readouterr().out


def test_one_panel_log_scale_is_narrower(tmp_path):
    pytest.importorskip("matplotlib")
    a = _write_run(tmp_path / "a")
    assert main(["plot", str(a), "--out", str(tmp_path / "all.png")]) == 0
    assert main(["plot", str(a), "--x", "tokens", "--log-y", "--out", str(tmp_path / "t.png")]) == 0
    assert 5_000 < len(_png(tmp_path / "t.png")) < len(_png(tmp_path / "all.png"))


def test_tokens_come_from_config_and_the_clock_survives_a_resume(tmp_path):
    run = load_run(_write_run(tmp_path / "a"), "a")
    assert run.train["tokens"][:2] == [5 * 8 * 2 * 32, 10 * 8 * 2 * 32]  # step x B x accum x T
    assert run.val["step"] == [10, 20, 30, 40]
    times = run.train["time"]
    assert all(t1 > t0 for t0, t1 in zip(times, times[1:], strict=False))
    assert _wall_clock([{"elapsed_s": 5}, {"elapsed_s": 9}, {"elapsed_s": 1}, {}]) == [
        5,
        9,
        10,
        None,
    ]


def test_tokens_per_step_comes_from_the_rows_before_the_config(tmp_path):
    """tokens_per_s x ms_per_step is the loop's own figure (world size included)."""
    run_dir = _write_run(tmp_path / "a")  # config.json says 8 x 2 x 32 = 512
    rows = [{"step": 5, "tokens_per_s": 4096.0, "ms_per_step": 500.0}]
    assert tokens_per_step(run_dir, rows) == 2048
    (run_dir / "config.json").write_text(
        json.dumps(
            {"train": {"batch_size": 8, "global_batch_tokens": 4096}, "model": {"seq_len": 32}}
        )
    )
    assert tokens_per_step(run_dir, []) == 4096


def test_a_tokens_field_wins_and_no_config_leaves_tokens_out(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    rows = [{"step": 1, "train_loss": 2.0, "tokens": 123}, {"step": 2, "val_loss": 1.9}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = load_run(run_dir, "r")
    assert run.train["tokens"] == [123]
    assert run.val["tokens"][0] != run.val["tokens"][0]  # NaN: unknown
    bare = _write_run(tmp_path / "bare", with_config=False)
    assert main(["plot", str(bare), "--out", str(tmp_path / "c.png")]) == 0
    assert "left off the tokens panel" in capsys.readouterr().err
    _png(tmp_path / "c.png")


def _empty(d):
    d.mkdir()
    (d / "metrics.jsonl").write_text("\n")


def _no_metrics(d):
    d.mkdir()


def _no_losses(d):
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 5, "lr": 0.001}\n')


def _damaged(d):
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 5, "train_loss": 3.0}\n{"step": 10, "tr\n{}\n')


@pytest.mark.parametrize(
    "make, needle",
    [
        (None, "does not exist"),
        (_no_metrics, "has no metrics.jsonl"),
        (_empty, "is empty"),
        (_no_losses, "no train_loss or val_loss"),
        (_damaged, "metrics.jsonl:2 is not a JSON object"),
    ],
)
def test_bad_run_dirs_exit_1_with_one_line(tmp_path, capsys, make, needle):
    run_dir = tmp_path / "run"
    if make is not None:
        make(run_dir)
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "x.png")]) == 1
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "x.png").exists()


def test_a_half_written_last_line_is_skipped(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 5, "train_loss": 3.0}\n{"step": 10, "tra')
    assert load_run(run_dir, "run").train["step"] == [5]


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "at least one run directory"),
        (["RUN", "--out", "curves.jpg"], "must end in .png"),
        (["RUN", "--x", "epoch"], "--x"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, args, needle):
    _write_run(tmp_path / "run")
    args = [str(tmp_path / "run") if a == "RUN" else a for a in args]
    assert main(["plot", *args]) == 2
    assert needle in _one_error_line(capsys)


def test_missing_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run_dir = _write_run(tmp_path / "run")
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "x.png")]) == 1
    assert "pip install 'gptlab[plot]'" in _one_error_line(capsys)


def test_metric_plots_one_column_and_names_the_others(tmp_path, capsys):
    run = _write_run(tmp_path / "a")
    r = load_run(run, "a", metric="val_bpb")
    assert r.val["loss"] == [1.5] * 4 and r.val["step"] == [10.0, 20.0, 30.0, 40.0]
    assert r.train["loss"] == []  # only the asked-for column
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        if "val_loss" in row:
            row["eval/hellaswag/acc_norm"] = 0.25 + 0.01 * i
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = load_run(run, "a", metric="eval/hellaswag/acc_norm")
    assert len(r.val["loss"]) == 4 and r.val["loss"][0] < r.val["loss"][-1]
    pytest.importorskip("matplotlib")
    out = tmp_path / "acc.png"
    assert main(["plot", str(run), "--metric", "eval/hellaswag/acc_norm", "--out", str(out)]) == 0
    _png(out)
    capsys.readouterr()
    assert main(["plot", str(run), "--metric", "eval/nope", "--out", str(tmp_path / "x.png")]) == 1
    line = _one_error_line(capsys)
    assert (
        "no 'eval/nope' values" in line and "val_bpb" in line and "eval/hellaswag/acc_norm" in line
    )
