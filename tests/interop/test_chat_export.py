"""The chat template across the border: `gptlab export --format hf` of a chat-tuned run writes
its template as tokenizer_config.json's `chat_template`, and transformers'
`apply_chat_template` on the exported tokenizer gives exactly our ids, for our BPE (the
special_tokens template), GPT-2 and a char vocabulary (plain)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from interop_models import GPT2_FILES, needs_gpt2_files
from tests.infer.chat_runs import bigram_gpt, save_chat_run

from gptlab.cli.main import main
from gptlab.interop.tokenizers import export_tokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.chat import Message, chat_template
from gptlab.tokenizer.train import train_bpe_tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = "Be brief. Hi there! Hello, how are you? Fine: thanks. What is two plus two? Four.\n"
CHATS = [
    [
        Message("system", "Be brief."),
        Message("user", "Hi there!"),
        Message("assistant", "Hello, how are you?"),
        Message("user", "What is two plus two?"),
        Message("assistant", "Four."),
    ],
    [Message("system", ""), Message("user", "Hi  there!\n\nFine:"), Message("assistant", "")],
    [Message("user", "Hello"), Message("assistant", " Fine: thanks.\n")],
]


def _hf_ids(hf_tok, messages: list[Message], generation: bool) -> list[int]:
    msgs = [{"role": m.role, "content": m.content} for m in messages]
    out = hf_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=generation)
    if not isinstance(out, list):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def _assert_parity(folder: Path, tok) -> None:
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    template = chat_template(tok)
    for chat in CHATS:
        assert _hf_ids(hf_tok, chat, False) == template.render(chat).ids
        without_reply = chat[:-1]  # ends with a user turn: the prompt for the last reply
        assert _hf_ids(hf_tok, without_reply, True) == template.prompt(without_reply)
    with pytest.raises(Exception, match="unknown chat role tool"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_exported_chat_run_renders_like_ours_in_transformers(cli_env):
    tok = train_bpe_tokenizer([CORPUS * 20], 300, "gpt4")
    sp = tok.special_tokens
    path = [sp["<|assistant_start|>"], *b"Hi", sp["<|assistant_end|>"]]
    model = bigram_gpt(tok.vocab_size, dict(zip(path[:-1], path[1:], strict=True)))
    save_chat_run(cli_env / "chat", model, tok, "special_tokens")
    assert main(["export", "chat", "--format", "hf", "--out", "hf"]) == 0
    config = json.loads((cli_env / "hf" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat_template(tok).jinja()
    _assert_parity(cli_env / "hf", tok)


def test_a_base_run_exports_no_chat_template(cli_env):
    tok = train_bpe_tokenizer([CORPUS * 20], 300, "gpt4")
    save_chat_run(cli_env / "base", bigram_gpt(tok.vocab_size, {}), tok, template=None)
    assert main(["export", "base", "--format", "hf", "--out", "hf"]) == 0
    config = json.loads((cli_env / "hf" / "tokenizer_config.json").read_text())
    assert "chat_template" not in config


@needs_gpt2_files
def test_gpt2_plain_template_renders_like_ours_in_transformers(tmp_path):
    from gptlab.tokenizer.pretrained import load_pretrained

    tok = load_pretrained("gpt2", data_dir=GPT2_FILES.parent)
    export_tokenizer(tok, tmp_path, 1024, chat_template(tok).jinja())
    _assert_parity(tmp_path, tok)


def test_char_plain_template_renders_like_ours_in_transformers(tmp_path):
    tok = CharTokenizer.train(CORPUS + "UA\n")
    export_tokenizer(tok, tmp_path, 64, chat_template(tok).jinja())
    _assert_parity(tmp_path, tok)
