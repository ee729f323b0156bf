"""LoRA runs through infer/load.py: merged weights for inference and for streaming, and a base
whose weights changed since training refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab import checkpoint
from gptlab.errors import GptlabError
from gptlab.infer.load import (
    LORA_BASE,
    load_for_inference,
    open_lora,
    open_weights,
    weights_hash,
)
from gptlab.model.config import LoRAConfig
from lora_checkpoint import tiny_cfg, write_base_run, write_lora_run


@pytest.fixture
def lora_run(tmp_path):
    base = write_base_run(tmp_path / "base", tiny_cfg())
    model = write_lora_run(tmp_path / "lora", str(tmp_path / "base"), base, LoRAConfig(rank=2))
    return tmp_path / "lora", model


def test_a_lora_checkpoint_holds_only_adapters(lora_run):
    run_dir, _ = lora_run
    stored = checkpoint.read_weights(run_dir / "latest")
    assert stored and all(".lora_" in n for n in stored)
    run = open_lora(run_dir)
    assert run.lora.rank == 2 and set(run.adapters) == set(stored)


def test_inference_and_streaming_see_the_merged_model(lora_run):
    run_dir, model = lora_run
    x = torch.randint(0, 32, (2, 10))
    with torch.no_grad():
        expected = model(x)
        loaded = load_for_inference(run_dir, "best", torch.device("cpu"), "float32")
        torch.testing.assert_close(loaded.model(x), expected, atol=1e-5, rtol=1e-5)
    assert loaded.config["lora"]["rank"] == 2 and loaded.tokenizer.vocab_size == 32
    source = open_weights(run_dir)
    assert not any("lora" in n for n in source.names)
    w = model.blocks[0].attn.qkv
    merged = w.weight + w.scale * torch.cat(
        [w.lora_B_q @ w.lora_A_q, torch.zeros(32, 32), w.lora_B_v @ w.lora_A_v]
    )
    read = source.read("blocks.0.attn.qkv.weight")
    torch.testing.assert_close(read, merged.detach(), atol=1e-6, rtol=1e-6)


def test_the_hash_covers_the_base_weights(tmp_path, lora_run):
    run_dir, _ = lora_run
    record = json.loads((run_dir / "latest" / LORA_BASE).read_text())
    assert record["weights_sha256"] == weights_hash(str(tmp_path / "base"))
    assert weights_hash(str(run_dir)) != record["weights_sha256"]  # base + adapters


def test_a_changed_base_is_refused_in_one_line(tmp_path, lora_run):
    run_dir, _ = lora_run
    write_base_run(tmp_path / "other", tiny_cfg(), seed=7)
    for name in ("best", "latest"):  # the base was retrained in place
        (tmp_path / "base" / name / "model.safetensors").unlink()
        (tmp_path / "other" / name / "model.safetensors").rename(
            tmp_path / "base" / name / "model.safetensors"
        )
    for load in (lambda: open_weights(run_dir), lambda: load_for_inference(run_dir, "best", "cpu")):
        with pytest.raises(GptlabError) as e:
            load()
        message = str(e.value)
        assert "changed since" in message and "restore the original base" in message
        assert "\n" not in message


def test_a_missing_base_is_one_line(tmp_path, lora_run):
    run_dir, _ = lora_run
    (tmp_path / "base").rename(tmp_path / "gone")
    with pytest.raises(GptlabError, match="needs its base model"):
        open_weights(run_dir)


def test_a_lora_run_on_an_hf_folder(tmp_path):
    pytest.importorskip("transformers")
    from gptlab.interop import hf

    base = write_base_run(tmp_path / "run", tiny_cfg())
    state = {n: p.detach() for n, p in base.named_parameters()}
    (tmp_path / "hf").mkdir()
    hf.export_hf(base.cfg, set(state), lambda n: state[n], None, tmp_path / "hf")
    spec = f"hf:{tmp_path / 'hf'}"
    model = write_lora_run(tmp_path / "lora", spec, base, LoRAConfig(rank=2, targets="all"))
    x = torch.randint(0, 32, (1, 9))
    with torch.no_grad():
        loaded = load_for_inference(tmp_path / "lora", "latest", torch.device("cpu"), "float32")
        torch.testing.assert_close(loaded.model(x), model(x), atol=1e-5, rtol=1e-5)
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(GptlabError, match="changed since"):
        open_weights(tmp_path / "lora")
