"""Presets: the big ones have their published parameter counts, the small ones learn."""

from pathlib import Path

import pytest
import torch
from tests.conftest import SHARED, shakespeare_path

from gptlab.model.accounting import build_meta, count_params
from gptlab.model.gpt import GPT
from gptlab.presets import CHAT_BPE_DIR, CHAT_BPE_VOCAB, PRESETS, get_preset
from gptlab.tokenizer.load import resolve_tokenizer

# GPT-2 paper / Hugging Face checkpoints, vocabulary 50257 (we pad to 50304: +0.03% at most)
PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_gpt2_presets_have_published_parameter_counts(name):
    cfg = get_preset(name).model
    total = count_params(build_meta(cfg)).total
    padding = (cfg.padded_vocab - cfg.vocab_size) * cfg.n_embd  # the extra (tied) rows
    assert total - padding == PUBLISHED[name]


def test_llama_presets_are_llama_style():
    for name in ("llama", "llama-15m", "llama-40m", "llama-100m"):
        m = get_preset(name).model
        assert (m.pos_emb, m.norm, m.mlp, m.bias) == ("rope", "rmsnorm", "swiglu", False)
        assert m.kv_heads < m.n_head  # GQA
    # 14.5M at llama2.c's vocabulary of 32000; GPT-2's 50257 adds 18257 x 288 tied embedding rows
    assert round(count_params(build_meta(get_preset("llama-15m").model)).total / 1e6, 1) == 19.8


@pytest.mark.skipif(
    shakespeare_path() is None or not (Path(SHARED) / "gpt2_tokenizer").is_dir(),
    reason="set GPTLAB_DATA_DIR to the shared data folder",
)
def test_every_preset_has_the_vocab_size_of_its_tokenizer():
    """So training, which takes vocab_size from the data's tokenizer, builds the preset's model."""
    chars = len(set(shakespeare_path().read_text(encoding="utf-8")))  # 65
    gpt2 = resolve_tokenizer("gpt2", data_dir=Path(SHARED)).vocab_size  # 50257
    for name in PRESETS:
        data, model = get_preset(name).data, get_preset(name).model
        if data.tokenizer == "char":
            assert (data.dataset, model.vocab_size) == ("shakespeare_char", chars), name
        elif data.tokenizer == CHAT_BPE_DIR:  # the chat example trains this BPE first
            assert model.vocab_size == CHAT_BPE_VOCAB, name
        else:
            assert (data.tokenizer, model.vocab_size) == ("gpt2", gpt2), name
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-15m", "llama-100m"):
        assert get_preset(name).data.tokenizer == "gpt2", name


def test_cpu_recipes_have_about_the_same_size():
    sizes = [
        count_params(build_meta(get_preset(n).model)).total
        for n in ("gpt2-char", "llama", "modern")
    ]
    assert max(sizes) / min(sizes) < 1.02


SMALL = [n for n in PRESETS if count_params(build_meta(get_preset(n).model)).total < 20e6]


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_train_a_few_steps_with_falling_loss(name):
    cfg = get_preset(name).model
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    T = min(cfg.seq_len, 32)
    x = torch.randint(cfg.vocab_size, (2, T))
    y = torch.randint(cfg.vocab_size, (2, T))
    losses = []
    for _ in range(6):
        loss, _ = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
