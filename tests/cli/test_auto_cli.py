"""gptlab train/info --auto.depth: the derivation is shown, saved, and explicit flags win."""

import json

from gptlab.cli.main import main
from gptlab.cli.train import build_auto_config

AUTO = ["--auto.aspect_ratio", "16", "--auto.head_dim", "8", "--auto.ref_depth", "2"]


def test_info_shows_the_derivation(cli_env, capsys):
    assert main(["info", "--preset", "tiny", "--auto.depth", "3", *AUTO]) == 0
    out = capsys.readouterr().out
    assert "sized by --auto.depth 3" in out
    assert "model.n_embd" in out and "depth 3 x aspect ratio 16 = 48" in out
    assert "shape       3 layers x 48 wide" in out and "attention   6 heads of 8" in out


def test_explicit_flags_override_the_derived_values(cli_env):
    argv = ["--preset", "tiny", "--auto.depth", "3", *AUTO, "--optim.lr", "0.0123"]
    cfg, _, note, derivation = build_auto_config(argv)
    assert cfg.model.n_embd == 48 and cfg.optim.lr == 0.0123
    derived_lr = next(d.value for d in derivation.items if d.name == "optim.lr")
    assert derived_lr != 0.0123 and "[flag: 0.0123]" in note
    assert cfg.train.max_steps == derivation.config.train.max_steps


def test_flags_the_derivation_depends_on_are_seen(cli_env):
    plain = build_auto_config(["--preset", "tiny", "--auto.depth", "2", *AUTO])[3]
    swiglu = build_auto_config(
        ["--preset", "tiny", "--auto.depth", "2", *AUTO, "--model.mlp", "swiglu"]
    )[3]
    assert swiglu.config.model.mlp == "swiglu" and swiglu.params != plain.params


def test_auto_settings_without_depth_and_with_resume_are_refused(cli_env, capsys):
    assert main(["info", "--preset", "tiny", "--auto.aspect_ratio", "16"]) == 2
    assert "need --auto.depth" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--resume", "--auto.depth", "2"]) == 2
    assert "drop the --auto.* flags" in capsys.readouterr().err


def test_train_saves_the_derivation_beside_config_json(cli_env, capsys, text_file):
    argv = [
        "train",
        "--preset",
        "tiny",
        "--data.dataset",
        str(text_file),
        "--train.out_dir",
        "r",
        "--auto.depth",
        "2",
        *AUTO,
        "--auto.param_data_ratio",
        "0.5",
        "--train.eval_interval",
        "1000",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sized by --auto.depth 2" in out and "train.max_steps" in out
    auto = json.loads((cli_env / "r" / "auto.json").read_text())
    config = json.loads((cli_env / "r" / "config.json").read_text())
    assert auto["auto"]["depth"] == 2 and auto["params_convention"] == "non_embedding"
    derived = {d["name"]: d for d in auto["derived"]}
    assert config["model"]["n_embd"] == derived["model.n_embd"]["value"] == 32
    assert config["train"]["max_steps"] == derived["train.max_steps"]["value"]
    assert all(d["reason"] for d in auto["derived"])
