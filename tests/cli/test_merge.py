"""`gptlab merge` and `gptlab export` on LoRA runs: a plain run that samples like the LoRA run,
PEFT and HF exports, and the refusals (one line each)."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab import checkpoint
from gptlab.cli.main import main
from gptlab.data.config import SFTConfig
from gptlab.model.config import LoRAConfig
from lora_checkpoint import tiny_cfg, write_base_run, write_lora_run

SAMPLE = ["--max_new_tokens", "20", "--seed", "3", "--quantize", "none"]  # exact weights


@pytest.fixture
def runs(cli_env):
    base = write_base_run(cli_env / "base", tiny_cfg())
    sft = SFTConfig(data="chat.jsonl", template="plain")
    model = write_lora_run(
        cli_env / "lora", str(cli_env / "base"), base, LoRAConfig(rank=2, targets="all"), sft
    )
    return cli_env, model


def test_merge_writes_a_plain_run_that_samples_the_same(runs, capsys):
    root, model = runs
    assert main(["merge", "lora", "--out", "merged"]) == 0
    assert "merged the LoRA adapters" in capsys.readouterr().out
    latest = root / "merged" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json",
    ]  # fmt: skip
    assert sorted(p.name for p in (root / "merged" / "best").iterdir()) == sorted(
        p.name for p in latest.iterdir()
    )
    config = checkpoint.load_config(latest)
    assert config["lora"]["rank"] == 0
    assert config["sft"]["template"] == "plain" and config["sft"]["data"] == "chat.jsonl"
    assert json.loads((root / "merged" / "config.json").read_text()) == config
    merged = checkpoint.load_model_from_checkpoint(latest).eval()  # a plain checkpoint
    x = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=1e-5)
    assert main(["sample", "lora", *SAMPLE]) == 0
    expected = capsys.readouterr().out
    assert main(["sample", "merged", *SAMPLE]) == 0
    assert capsys.readouterr().out == expected
    # int8 weights (the default on an AVX-512 CPU) take a LoRA run's base and adapters alike
    assert main(["sample", "lora", "--max_new_tokens", "5", "--quantize", "int8"]) == 0


def test_merge_refusals_are_one_line_exit_2(runs, capsys):
    root, _ = runs
    cases = [
        (["merge", "base", "--out", "m1"], "has no LoRA adapters"),
        (["merge", "nowhere", "--out", "m2"], "no run directory at nowhere"),
    ]
    (root / "taken").mkdir()
    (root / "taken" / "x").write_text("keep")
    cases.append((["merge", "lora", "--out", "taken"], "exists and is not empty"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (root / "taken" / "x").read_text() == "keep"
    assert not (root / "m1").exists() and not (root / "m2").exists()
    (root / "empty").mkdir()
    assert main(["merge", "lora", "--out", "empty", "--checkpoint", "latest"]) == 0
    assert (root / "empty" / "latest" / "model.safetensors").is_file()


def test_merge_refuses_a_changed_base(runs, capsys):
    root, _ = runs
    write_base_run(root / "other", tiny_cfg(), seed=5)
    target = root / "base" / "best" / "model.safetensors"
    target.write_bytes((root / "other" / "best" / "model.safetensors").read_bytes())
    assert main(["merge", "lora", "--out", "m"]) == 1
    err = capsys.readouterr().err
    assert "changed since" in err and err.count("\n") == 1
    assert not (root / "m").exists()


def test_export_of_a_lora_run(runs, capsys):
    pytest.importorskip("transformers")
    root, _ = runs
    assert main(["export", "lora", "--out", "adapter", "--format", "peft"]) == 0
    assert "gptlab export" in capsys.readouterr().out
    names = sorted(p.name for p in (root / "adapter").iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors"]
    assert main(["export", "lora", "--out", "full", "--format", "hf"]) == 0  # merged
    assert (root / "full" / "model.safetensors").is_file()
    assert main(["export", "lora", "--out", "copy"]) == 1
    assert "gptlab merge lora" in capsys.readouterr().err
    assert main(["export", "base", "--out", "nope", "--format", "peft"]) == 1
    assert "holds no LoRA adapters" in capsys.readouterr().err
