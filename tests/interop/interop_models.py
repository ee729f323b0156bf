"""Tiny random Hugging Face models saved to disk: the sources the interop tests convert."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

SHARED = os.environ.get("GPTLAB_DATA_DIR")
GPT2_FILES = Path(SHARED or "/nonexistent") / "gpt2_tokenizer"
needs_gpt2_files = pytest.mark.skipif(
    not (GPT2_FILES / "encoder.json").is_file(), reason="set GPTLAB_DATA_DIR (GPT-2 tokenizer)"
)


def save_hf(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def tiny_gpt2(folder: Path, *, tied: bool = True, vocab: int = 101, **kw) -> Path:
    torch.manual_seed(0)
    fields = dict(n_layer=2, n_head=3, n_embd=48, n_positions=40, vocab_size=vocab,
                  activation_function="gelu", tie_word_embeddings=tied)  # fmt: skip
    cfg = transformers.GPT2Config(**{**fields, **kw})
    return save_hf(transformers.GPT2LMHeadModel(cfg).eval(), folder)


def add_gpt2_tokenizer(folder: Path) -> None:
    shutil.copyfile(GPT2_FILES / "encoder.json", folder / "vocab.json")
    shutil.copyfile(GPT2_FILES / "vocab.bpe", folder / "merges.txt")


def tiny_llama(folder: Path, kind: str = "llama", **kw) -> Path:
    torch.manual_seed(0)
    base = dict(
        num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, hidden_size=48,
        intermediate_size=70, max_position_embeddings=40, vocab_size=97, head_dim=8,
    )  # fmt: skip
    base.update(kw)
    config_cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[kind]
    model_cls = transformers.AutoModelForCausalLM
    return save_hf(model_cls.from_config(config_cls(**base)).eval(), folder)
