"""The command line, in process (fast) and once through the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import SHARED, needs_shakespeare

from gptlab.cli.main import main
from gptlab.config import from_dict
from gptlab.model.accounting import count_params
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT

TINY = ["--preset", "tiny", "--train.max_steps", "20"]

needs_gpt2_and_shakespeare = pytest.mark.skipif(
    not SHARED
    or not (Path(SHARED) / "gpt2_tokenizer" / "encoder.json").is_file()
    or not (Path(SHARED) / "tinyshakespeare" / "input.txt").is_file(),
    reason="set GPTLAB_DATA_DIR to the shared data folder",
)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_help_lists_every_field_with_type_and_default(cli_env, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in [
        "--model.n_layer",
        "--model.n_head",
        "--model.n_embd",
        "--model.seq_len",
        "--model.vocab_size",
        "--model.dropout",
        "--model.bias",
        "--optim.lr",
        "--optim.min_lr",
        "--optim.weight_decay",
        "--optim.beta1",
        "--optim.beta2",
        "--optim.warmup_steps",
        "--optim.grad_clip",
        "--train.max_steps",
        "--train.batch_size",
        "--train.grad_accum_steps",
        "--train.eval_interval",
        "--train.eval_steps",
        "--train.log_interval",
        "--train.seed",
        "--train.device",
        "--train.dtype",
        "--train.compile",
        "--train.out_dir",
        "--data.dataset",
        "--preset",
        "--config",
        "--resume",
    ]:
        assert flag in out, flag
    assert "Number of transformer blocks" in out and "(default: 4)" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model.n_head", "5"], "not divisible by model.n_head 5"),
        (["--optim.lr", "-1"], "optim.lr must be > 0"),
        (["--model.n_layers", "3"], "did you mean --model.n_layer"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--model.n_layer", "x"], "--model.n_layer"),
        (["--train.dtype", "half"], "--train.dtype"),
        (["--config", "missing.yaml"], "missing.yaml does not exist"),
        (["--model.n_kv_head", "3", "--model.n_head", "4"], "must be >= 1 and divide"),
        (["--model.window", "0"], "model.window must be a positive"),
        (["--model.moe.n_experts", "2", "--model.moe.top_k", "3"], "model.moe.top_k 3"),
        (
            [
                "--preset",
                "tiny",
                "--model.pos_emb",
                "rope",
                "--model.n_embd",
                "30",
                "--model.n_head",
                "2",
            ],
            "head dimension must be even",
        ),  # fmt: skip
        (["--model.attn_backend", "cudnn"], "--model.attn_backend"),
        (["--model.window_pattern", "SXL", "--model.window", "8"], "may only hold S"),
    ],
)
def test_bad_values_exit_2_with_one_line(cli_env, capsys, args, needle):
    assert main(["train", *TINY, *args]) == 2
    assert needle in _one_error_line(capsys)


def test_config_file_with_unknown_field(cli_env, capsys):
    (cli_env / "c.yaml").write_text("model:\n  n_layers: 2\n")
    assert main(["train", "--config", "c.yaml"]) == 2
    assert "unknown config field 'model.n_layers'" in _one_error_line(capsys)


def test_dataset_missing_while_offline(cli_env, capsys, monkeypatch):
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(cli_env / "empty"))
    assert main(["train", *TINY, "--data.dataset", "shakespeare_char"]) == 1
    assert "tinyshakespeare/input.txt" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"caf\xe9 au lait " * 50, "is not UTF-8"),
        (b"too short", "fewer than one window"),
    ],
)
def test_bad_text_files(cli_env, capsys, content, needle):
    (cli_env / "in.txt").write_bytes(content)
    assert main(["train", *TINY, "--data.dataset", "in.txt"]) == 1
    assert needle in _one_error_line(capsys)
    assert not (cli_env / "runs").exists()


def test_prepare_then_train_then_sample_is_reproducible(cli_env, capsys, text_file):
    assert main(["prepare", str(text_file), "--out", "prep"]) == 0
    meta = json.loads((cli_env / "prep" / "meta.json").read_text())
    assert meta["tokenizer"] == "char" and meta["dtype"] == "uint16"
    assert main(["train", *TINY, "--data.dataset", "prep", "--train.out_dir", "r"]) == 0
    capsys.readouterr()
    args = ["sample", "r", "--prompt", "th", "--max-new-tokens", "30", "--seed", "7"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("th") and len(first) >= 32
    assert main([*args[:-1], "8", "--num-samples", "2"]) == 0
    assert "-" * 40 in capsys.readouterr().out


def test_sample_bad_inputs(cli_env, capsys, text_file):
    assert main(["sample", "nope"]) == 1
    assert "does not exist" in _one_error_line(capsys)
    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    capsys.readouterr()
    assert main(["sample", "r", "--prompt", "\u2603"]) == 2  # a bad value: a usage error
    assert "not in this model" in _one_error_line(capsys)
    assert main(["sample", "r", "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in _one_error_line(capsys)
    assert main(["sample", "r", "--prompt", "@missing.txt"]) == 1
    assert "does not exist" in _one_error_line(capsys)
    (cli_env / "p.txt").write_text("the")
    assert main(["sample", "r", "--prompt", "@p.txt", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the")
    weights = cli_env / "r" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["sample", "r"]) == 1
    assert "corrupt or truncated" in _one_error_line(capsys)


def test_resume_errors_and_no_overwrite(cli_env, capsys, text_file):
    assert main(["train", *TINY, "--resume", "--train.out_dir", "nope"]) == 1
    assert "no checkpoint" in _one_error_line(capsys)
    base = [*TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]
    assert main(["train", *base]) == 0
    weights = (cli_env / "r" / "latest" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", *base]) == 1
    assert "already holds a run" in _one_error_line(capsys)
    assert main(["train", *base, "--resume", "--model.n_layer", "3"]) == 1
    assert "cannot change the architecture" in _one_error_line(capsys)
    assert (cli_env / "r" / "latest" / "model.safetensors").read_bytes() == weights
    # resuming with a longer schedule continues from step 20
    assert main(["train", "--resume", "--train.out_dir", "r", "--train.max_steps", "30"]) == 0
    rows = (cli_env / "r" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 30


def test_unknown_verb(capsys):
    assert main(["trian"]) == 2
    assert "unknown verb 'trian'" in _one_error_line(capsys)


@needs_shakespeare
def test_console_script_end_to_end_on_shakespeare(tmp_path):
    """prepare -> train 20 steps -> sample through the real `gptlab` command."""
    env = {
        **__import__("os").environ,
        "GPTLAB_CACHE_DIR": str(tmp_path / "cache"),
        "GPTLAB_OFFLINE": "1",
    }
    exe = [sys.executable, "-m", "gptlab.cli.main"]

    def run(*args):
        return subprocess.run(
            [*exe, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    p = run("prepare", "shakespeare_char")
    assert p.returncode == 0, p.stderr
    assert "1,003,854 train / 111,540 val tokens in 1 / 1 documents, vocab 65" in p.stdout
    p = run(
        "train",
        "--preset",
        "shakespeare_char_cpu",
        "--train.max_steps",
        "20",
        "--train.eval_interval",
        "10",
        "--train.eval_steps",
        "2",
        "--optim.warmup_steps",
        "5",
        "--train.log_interval",
        "10",
        "--train.out_dir",
        "run",
    )
    assert p.returncode == 0, p.stderr
    assert "preset shakespeare_char_cpu" in p.stdout and "step    20/20" in p.stdout
    p = run("sample", "run", "--prompt", "ROMEO:", "--max-new-tokens", "40")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ROMEO:") and len(p.stdout) > 40


def test_info_for_presets_and_runs(cli_env, capsys, text_file):
    assert main(["info", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,475,904 (124.48M)" in out and "vocab 50257 padded to 50304" in out
    assert main(["info", "--preset", "modern", "--model.moe.n_experts", "4"]) == 0
    out = capsys.readouterr().out
    assert "active per token" in out and "qk-norm" in out and "relu2" in out
    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    capsys.readouterr()
    assert main(["info", "r"]) == 0
    assert "layers x 32 wide" in capsys.readouterr().out


def test_train_prints_a_short_summary_first(cli_env, capsys, text_file):
    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    lines = capsys.readouterr().out.splitlines()
    stored = json.loads((cli_env / "r" / "config.json").read_text())
    vocab = stored["model"]["vocab_size"]
    n_params = count_params(GPT(from_dict(ModelConfig, stored["model"]))).total
    start = lines.index("preset tiny")  # after the data is ready: with the data's vocabulary
    assert lines[start : start + 6] == [
        "preset tiny",
        f"  model   {_k(n_params)} parameters: 2 layers x 32 wide, 2 heads, context 32, "
        f"vocab {vocab}",
        f"  data    {text_file}, tokenizer char",
        "  train   20 steps, adamw lr 0.003",
        "  device  cpu, compute dtype float32",
        f"  out     r (full config: {Path('r') / 'config.json'})",
    ]
    assert not any('{"' in line for line in lines)  # the config itself is not dumped
    assert stored["train"]["max_steps"] == 20
    # a refused run (the directory holds a run) prints only its error: no summary
    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 1
    out, err = capsys.readouterr()
    assert "preset tiny" not in out and err.count("\n") == 1 and "already holds a run" in err


def _k(n: int) -> str:
    return f"{n / 1e3:.1f}K"


@needs_gpt2_and_shakespeare
def test_info_shows_what_train_builds_for_the_gpt2_preset(cli_env, capsys):
    """The preset's data is GPT-2 tokens, so training keeps its vocab_size: `info --preset`
    describes the very model that `train` saves. (Shrunk by flags to train on a CPU; the data
    only ever changes the vocabulary.)"""
    small = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32"]
    small += ["--model.seq_len", "32", "--train.device", "cpu", "--train.dtype", "float32"]
    assert main(["info", "--preset", "gpt2", *small]) == 0
    from_preset = capsys.readouterr().out.splitlines()
    assert "vocab 50257 padded to 50304" in from_preset[6]
    steps = ["--train.max_steps", "1", "--train.batch_size", "2", "--train.grad_accum_steps", "1"]
    steps += ["--optim.warmup_steps", "0", "--train.eval_steps", "1", "--train.out_dir", "r"]
    assert main(["train", "--preset", "gpt2", *small, *steps]) == 0
    trained = capsys.readouterr().out
    assert "  data    shakespeare_char, tokenizer gpt2" in trained
    assert "model.vocab_size" not in trained  # the data did not override the preset's vocab
    assert main(["info", "r"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == from_preset[1:]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["does-not-exist"], "does not exist"),
        (["--preset", "llama", "--model.n_kv_head", "3"], "divide model.n_head 4"),
    ],
)
def test_info_bad_input(cli_env, capsys, args, needle):
    assert main(["info", *args]) != 0
    assert needle in _one_error_line(capsys)


def test_chat_continues_text_and_runs_commands(cli_env, capsys, monkeypatch, text_file):
    """`gptlab chat` on a base model: each line is continued; /commands change settings,
    /reset clears the history, bad values and unknown commands are reported, /quit leaves."""
    import io

    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    capsys.readouterr()
    lines = ["the", "/temperature 0", "/top_k 0", "/temperature -1", "/bogus", "/history",
             "and", "/reset", "/history", "\u2603", "/quit", "never read"]  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", "r", "--max-new-tokens", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "base model: it continues your text" in out
    assert "(temperature = 0.0)" in out and "(top_k = 0)" in out
    assert "(not changed: temperature must be >= 0" in out
    assert "(unknown command /bogus" in out
    assert "(conversation reset)" in out and "(empty)" in out
    assert "(error: the prompt cannot be encoded" in out
    assert "never read" not in out


def test_chat_with_a_transcript_template(cli_env, capsys, monkeypatch, text_file):
    import io

    assert main(["train", *TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/history\n"))
    args = ["chat", "r", "--template", "transcript", "--max-new-tokens", "5", "--system", "be"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "chat format transcript" in out
    assert "[system] be" in out and "[user] hello" in out and "[assistant]" in out
