"""`gptlab export RUN_DIR --out DIR`: a weights-only checkpoint that samples like the original."""

from gptlab.cli.main import main

TINY = ["--preset", "tiny", "--train.max_steps", "10", "--train.eval_interval", "10"]


def test_export_is_small_and_samples_the_same(cli_env, capsys, text_file):
    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    assert main(["export", "r", "--out", "small"]) == 0
    names = sorted(p.name for p in (cli_env / "small").iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json"]
    capsys.readouterr()
    sample = ["--max_new_tokens", "30", "--seed", "3", "--quantize", "none"]  # exact weights
    assert main(["sample", "r", *sample]) == 0
    original = capsys.readouterr().out
    assert main(["sample", "small", *sample]) == 0
    assert capsys.readouterr().out == original


def test_export_refuses_to_overwrite_and_missing_runs(cli_env, capsys, text_file):
    assert main(["export", "nothing", "--out", "x"]) == 1
    assert "no best/ checkpoint" in capsys.readouterr().err
    (cli_env / "taken").mkdir()
    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    assert main(["export", "r", "--out", "taken"]) == 1
    assert "already exists" in capsys.readouterr().err
