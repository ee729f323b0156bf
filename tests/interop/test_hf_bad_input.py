"""Bad input to import, export and --init-from: one line, non-zero exit, nothing left behind."""

from __future__ import annotations

import json

import pytest
import torch
from interop_models import tiny_gpt2
from safetensors.torch import load_file, save_file

from gptlab.cli.main import main


class NotATensor:
    """Something a pickle can hold that weights_only loading must refuse."""


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for needle in needles:
        assert needle in err, err


def _nothing_written(root) -> None:
    assert not (root / "out").exists()
    assert not list(root.glob(".out.tmp-*"))


def _import(folder, capsys) -> int:
    capsys.readouterr()  # transformers' progress bars from saving the source
    return main(["import", str(folder), "--out", "out", "--tokenizer", "gpt2"])


def test_not_a_model_folder(cli_env, capsys):
    (cli_env / "empty").mkdir()
    assert _import(cli_env / "empty", capsys) == 1
    _one_line_error(capsys, "not a Hugging Face model folder")
    _nothing_written(cli_env)


def test_unsupported_architecture_is_named_with_the_supported_ones(cli_env, capsys):
    (cli_env / "bert").mkdir()
    doc = {"model_type": "bert", "architectures": ["BertForMaskedLM"]}
    (cli_env / "bert" / "config.json").write_text(json.dumps(doc))
    assert _import(cli_env / "bert", capsys) == 2
    _one_line_error(capsys, "BertForMaskedLM", "GPT2LMHeadModel", "LlamaForCausalLM")


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_damaged_checkpoints_name_the_keys(cli_env, capsys, damage):
    folder = tiny_gpt2(cli_env / "g")
    state = load_file(folder / "model.safetensors")
    if damage == "missing":
        del state["transformer.h.1.mlp.c_fc.bias"]
    elif damage == "unexpected":
        state["transformer.h.0.extra.weight"] = torch.zeros(3)
    else:
        state["transformer.h.0.attn.c_attn.weight"] = torch.zeros(48, 100)
    save_file(state, folder / "model.safetensors")
    assert _import(folder, capsys) == 1
    needle = {"missing": "h.1.mlp.c_fc.bias", "unexpected": "h.0.extra.weight"}.get(
        damage, "(48, 100)"
    )
    _one_line_error(capsys, needle)
    _nothing_written(cli_env)


def test_bin_with_pickled_objects_is_refused(cli_env, capsys):
    folder = tiny_gpt2(cli_env / "g")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, "trojan": NotATensor()}, folder / "pytorch_model.bin")
    assert _import(folder, capsys) == 1
    _one_line_error(capsys, "refused")
    _nothing_written(cli_env)


def test_plain_tensor_bin_is_read(cli_env, capsys):
    """A tensors-only .bin passes the weight checks (this one then lacks a tokenizer)."""
    folder = tiny_gpt2(cli_env / "g")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    capsys.readouterr()
    assert main(["import", str(folder), "--out", "out"]) == 1
    _one_line_error(capsys, "ships no tokenizer")
    _nothing_written(cli_env)


TINY = ["--preset", "tiny", "--train.max_steps", "2", "--train.eval_interval", "2",
        "--optim.warmup_steps", "0"]  # fmt: skip


def test_export_of_a_feature_without_equivalent_is_refused(cli_env, capsys, text_file):
    run = [*TINY, "--data.dataset", str(text_file), "--train.out_dir", "r"]
    assert main(["train", *run, "--model.logit_softcap", "15"]) == 0
    capsys.readouterr()
    assert main(["export", "r", "--format", "hf", "--out", "out"]) == 1
    _one_line_error(capsys, "logit softcapping")
    _nothing_written(cli_env)


def test_init_from_refusals(cli_env, capsys, text_file):
    run = [*TINY, "--data.dataset", str(text_file)]
    assert main(["train", *run, "--train.out_dir", "src"]) == 0
    capsys.readouterr()
    assert main(["train", *run, "--init-from", "src", "--resume", "--train.out_dir", "x"]) == 2
    _one_line_error(capsys, "--resume")
    assert main(["train", *run, "--init-from", "src", "--model.n_embd", "64",
                 "--train.out_dir", "x"]) == 2  # fmt: skip
    _one_line_error(capsys, "model.n_embd")
    assert not (cli_env / "x").exists()


def test_init_from_starts_from_the_weights_and_extends_positions(cli_env, capsys, text_file):
    """Step 0 of the new run evaluates exactly the source's weights; a longer context keeps the
    source's position rows and initialises the new ones."""
    from gptlab import checkpoint

    run = [*TINY, "--data.dataset", str(text_file)]
    assert main(["train", *run, "--train.out_dir", "src"]) == 0
    assert main(["train", *run, "--init-from", "src", "--train.max_steps", "1",
                 "--train.eval_interval", "1", "--optim.lr", "1e-12", "--optim.min_lr", "1e-12",
                 "--optim.warmup_steps", "0", "--train.out_dir", "ft"]) == 0  # fmt: skip
    before = checkpoint.read_weights(cli_env / "src" / "best")
    after = checkpoint.read_weights(cli_env / "ft" / "latest")
    assert set(after) == set(before)
    for name, value in before.items():  # lr 1e-12: the weights are the source's
        torch.testing.assert_close(after[name], value, atol=1e-8, rtol=0)
    assert main(["train", *run, "--init-from", "src", "--model.seq_len", "48",
                 "--train.out_dir", "long"]) == 0  # fmt: skip
    wpe = checkpoint.read_weights(cli_env / "long" / "latest")["wpe.weight"]
    assert wpe.shape[0] == 48
    stored = json.loads((cli_env / "long" / "config.json").read_text())
    # recorded as an absolute path: the run finds its source again from any directory
    assert stored["train"]["init_from"] == str((cli_env / "src").resolve())
    assert stored["model"]["seq_len"] == 48
