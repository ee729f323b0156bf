"""Golden tests against transformers: import and export keep the logits, round trips are
bitwise, greedy decoding and tokenizers agree."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from interop_models import GPT2_FILES, add_gpt2_tokenizer, needs_gpt2_files, tiny_gpt2, tiny_llama
from safetensors.torch import load_file, save_file

from gptlab.infer.load import open_weights
from gptlab.interop import gpt2, hf
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT

transformers = pytest.importorskip("transformers")


def _hf_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(x).logits


def _ours_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf.build_model(hf.open_hf(folder))(x)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_import_logits_match(tmp_path, tied):
    folder = tiny_gpt2(tmp_path / "g", tied=tied)
    x = torch.randint(0, 101, (2, 23))
    torch.testing.assert_close(_ours_logits(folder, x), _hf_logits(folder, x), atol=1e-5, rtol=0)


def test_gpt2_bare_key_layout_imports_the_same(tmp_path):
    """A GPT2Model-style file (no `transformer.` prefix) converts to the same model."""
    folder = tiny_gpt2(tmp_path / "g")
    x = torch.randint(0, 101, (1, 17))
    expected = _ours_logits(folder, x)
    state = load_file(folder / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in state.items()},
              folder / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    assert not any(k.startswith("transformer.") for k in load_file(folder / "model.safetensors"))
    torch.testing.assert_close(_ours_logits(folder, x), expected, atol=0, rtol=0)


def test_gpt2_tanh_gelu_imports_as_gelu_tanh_and_round_trips(tmp_path):
    """The original GPT-2's activation (gelu_new) maps to model.mlp gelu_tanh: fp32 parity,
    and it exports back as gelu_new."""
    folder = tiny_gpt2(tmp_path / "g", activation_function="gelu_new")
    x = torch.randint(0, 101, (2, 19))
    assert hf.open_hf(folder).cfg.mlp == "gelu_tanh"
    torch.testing.assert_close(_ours_logits(folder, x), _hf_logits(folder, x), atol=1e-5, rtol=1e-5)
    cfg = hf.open_hf(folder).cfg
    assert gpt2.refusal(cfg) is None
    assert gpt2.hf_config(cfg, None, None)["activation_function"] == "gelu_new"
    plain = dataclasses.replace(cfg, mlp="gelu")
    assert gpt2.hf_config(plain, None, None)["activation_function"] == "gelu"


LLAMAS = {
    "gqa_tied": ("llama", dict(tie_word_embeddings=True)),
    "mha_untied_linear_rope": (
        "llama",
        dict(
            num_key_value_heads=6,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
        ),
    ),  # fmt: skip
    "biases": ("llama", dict(attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5)),
    "mistral_window": ("mistral", dict(sliding_window=5)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3_qk_norm": ("qwen3", dict()),
}


@pytest.mark.parametrize("name", list(LLAMAS))
def test_llama_family_import_logits_match(tmp_path, name):
    kind, kw = LLAMAS[name]
    folder = tiny_llama(tmp_path / name, kind, **kw)
    x = torch.randint(0, 97, (2, 21))
    torch.testing.assert_close(_ours_logits(folder, x), _hf_logits(folder, x), atol=1e-5, rtol=0)


def _export(cfg: ModelConfig, out: Path, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():  # norms away from 1 and biases away from 0, so their maps matter
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    state = {n: p.detach() for n, p in model.named_parameters()}
    out.mkdir()
    hf.export_hf(cfg, set(state), state.__getitem__, None, out)
    return model


EXPORTS = {
    "gpt2_untied_padded": ModelConfig(
        n_layer=2,
        n_head=3,
        n_embd=48,
        seq_len=32,
        vocab_size=77,
        vocab_multiple=64,
        tie_embeddings=False,
    ),  # fmt: skip
    "gpt2_no_bias": ModelConfig(
        n_layer=2, n_head=2, n_embd=32, seq_len=32, vocab_size=50, bias=False
    ),  # fmt: skip
    "llama_gqa": ModelConfig(
        n_layer=2,
        n_head=6,
        n_kv_head=3,
        n_embd=48,
        seq_len=32,
        vocab_size=61,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        d_ff=72,
    ),  # fmt: skip
    "llama_linear_rope_untied": ModelConfig(
        n_layer=2,
        n_head=4,
        n_embd=32,
        seq_len=32,
        vocab_size=61,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        rope_scaling="linear",
        rope_factor=2.0,
        tie_embeddings=False,
    ),  # fmt: skip
    "qwen3_qk_norm": ModelConfig(
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        seq_len=32,
        vocab_size=61,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        qk_norm=True,
        bias=False,
    ),  # fmt: skip
    "mistral_window": ModelConfig(
        n_layer=2,
        n_head=4,
        n_embd=32,
        seq_len=32,
        vocab_size=61,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        window=6,
        bias=False,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_loads_in_transformers_with_equal_logits(tmp_path, name):
    cfg = EXPORTS[name]
    model = _export(cfg, tmp_path / "out")
    x = torch.randint(0, cfg.vocab_size, (2, 27))
    with torch.no_grad():
        ours = model(x)
    torch.testing.assert_close(_hf_logits(tmp_path / "out", x), ours, atol=1e-5, rtol=0)
    meta = load_file(tmp_path / "out" / "model.safetensors")  # no shared tensors, format pt
    ptrs = [t.data_ptr() for t in meta.values()]
    assert len(set(ptrs)) == len(ptrs)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_import_export_round_trip_is_bitwise(tmp_path, name):
    if name == "gpt2":
        folder = tiny_gpt2(tmp_path / "src", tied=False)
    else:
        folder = tiny_llama(tmp_path / "src", "llama", tie_word_embeddings=False)
    source = open_weights(f"hf:{folder}")
    (tmp_path / "out").mkdir()
    hf.export_hf(source.cfg, source.names, source.read, None, tmp_path / "out")
    before = load_file(folder / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    doc = json.loads((tmp_path / "out" / "config.json").read_text())
    assert doc["architectures"] == [{"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[name]]


def test_export_refuses_what_has_no_exact_equivalent():
    for field, value in [("attn_softcap", 30.0), ("logit_softcap", 15.0), ("embed_scale", True),
                         ("pos_emb", "alibi"), ("mlp", "relu2")]:  # fmt: skip
        reason = hf.export_refusal(ModelConfig(**{field: value}))
        assert reason is not None and (field in reason or str(value) in reason), (field, reason)
    yarn = ModelConfig(pos_emb="rope", norm="rmsnorm", mlp="swiglu", rope_scaling="yarn",
                       rope_factor=2.0)  # fmt: skip
    assert "yarn" in hf.export_refusal(yarn)
    assert hf.export_refusal(ModelConfig()) is None


@needs_gpt2_files
def test_greedy_sample_matches_transformers_generate(cli_env, capsys):
    from gptlab.cli.main import main

    folder = tiny_gpt2(cli_env / "g", vocab=50257)
    add_gpt2_tokenizer(folder)
    assert main(["import", str(folder), "--out", "run"]) == 0
    assert main(["export", "run", "--format", "hf", "--out", "exported"]) == 0
    capsys.readouterr()
    prompt = "The king said"
    args = [
        "--temperature",
        "0",
        "--max_new_tokens",
        "12",
        "--prompt",
        prompt,
        "--quantize",
        "none",
    ]
    assert main(["sample", "run", *args]) == 0
    ours = capsys.readouterr().out.rstrip("\n")
    assert main(["sample", "hf:exported", *args]) == 0  # on the fly: the same text
    assert capsys.readouterr().out.rstrip("\n") == ours
    tok = transformers.AutoTokenizer.from_pretrained(cli_env / "exported")
    model = transformers.AutoModelForCausalLM.from_pretrained(cli_env / "exported").eval()
    ids = torch.tensor([[tok.bos_token_id, *tok(prompt)["input_ids"]]])  # gptlab starts at BOS
    out = model.generate(
        ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids)
    )
    assert tok.decode(out[0, 1:]) == ours


@needs_gpt2_files
def test_eval_takes_an_hf_folder_and_scores_it_like_the_imported_run(cli_env):
    """`gptlab eval hf:DIR` converts on the fly: the same perplexity as the imported run."""
    from gptlab.cli.main import main

    folder = tiny_gpt2(cli_env / "g", vocab=50257)
    add_gpt2_tokenizer(folder)
    assert main(["import", str(folder), "--out", "run"]) == 0
    text = cli_env / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    results = {}
    for target in ("run", f"hf:{folder}"):
        out = cli_env / f"{len(results)}.json"
        assert main(["eval", target, "--tasks", f"ppl:{text}", "--out", str(out)]) == 0
        results[target] = json.loads(out.read_text())
    ours, theirs = (r["tasks"][f"ppl:{text}"] for r in results.values())
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-6)
    assert theirs["n"] == ours["n"] > 0
    # scored as lm-evaluation-harness scores GPT-2: no BOS, whether imported or on the fly
    assert [r["settings"]["bos"] for r in results.values()] == [False, False]


TRICKY = "Héllo  wörld!\n\n\tcafé 123456 don't DON'T 🤖🤖 <|endoftext|> x  \u00a0 ¿qué? 中文"


@needs_gpt2_files
def test_exported_tokenizer_encodes_like_ours(tmp_path):
    from gptlab.interop.tokenizers import export_tokenizer, tokenizer_from_hf
    from gptlab.tokenizer.char import CharTokenizer
    from gptlab.tokenizer.pretrained import load_pretrained

    ours = load_pretrained("gpt2", data_dir=GPT2_FILES.parent)
    (tmp_path / "bpe").mkdir()
    export_tokenizer(ours, tmp_path / "bpe", 1024)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "bpe")
    assert theirs(TRICKY)["input_ids"] == ours.encode(TRICKY, allowed_special=True)
    assert theirs.decode(ours.encode_ordinary(TRICKY)) == TRICKY
    back = tokenizer_from_hf(tmp_path / "bpe", None, None)  # a Split + ByteLevel tokenizer.json
    assert back.fingerprint() == ours.fingerprint() and back.eos == "<|endoftext|>"

    chars = CharTokenizer.train("abc de\nfg!")
    (tmp_path / "char").mkdir()
    export_tokenizer(chars, tmp_path / "char", 64)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "char")
    text = "bad fed\n  g!"
    assert theirs(text)["input_ids"] == chars.encode(text)
    assert theirs.decode(chars.encode(text)) == text


def test_sentencepiece_style_tokenizer_is_wrapped(tmp_path):
    """A Llama-2-style tokenizer.json (Metaspace, byte fallback) runs through HF tokenizers
    behind our interface, encodes as transformers does and survives save/load."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from gptlab.interop.tokenizers import tokenizer_from_hf
    from gptlab.tokenizer.hf import HFTokenizer

    tk = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                          normalizers.Replace(" ", "\u2581")])  # fmt: skip
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])  # fmt: skip
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *bytes_])
    tk.train_from_iterator(["the king and the queen of denmark said hello"] * 50, trainer)
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>",
                                                                "eos_token": "</s>"}))  # fmt: skip
    ours = tokenizer_from_hf(tmp_path, None, None)
    assert isinstance(ours, HFTokenizer) and ours.bos == "<s>" and ours.eos == "</s>"
    text = "the queen said 🤖 héllo"
    assert ours.encode_ordinary(text) == tk.encode(text, add_special_tokens=False).ids
    assert ours.decode(ours.encode_ordinary(text)) == text
    ours.save(tmp_path / "saved")
    again = HFTokenizer.load(tmp_path / "saved")
    assert again.encode_ordinary(text) == ours.encode_ordinary(text)
    assert again.fingerprint() == ours.fingerprint()
    assert again.token_bytes()[ours.encode_ordinary("🤖")[0]] == 1  # a byte-fallback token
