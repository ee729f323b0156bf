"""Chat formats and sessions: a chat-tuned run uses its recorded template and stops at end of
turn, a base model keeps the transcript, typed special spellings stay text, and no special
token ever reaches a reply (tested with crafted "bigram" models, tests/infer/chat_runs.py)."""

from __future__ import annotations

import io

import pytest
import torch
from tests.infer.chat_runs import bigram_gpt, save_chat_run

from gptlab.cli.main import main
from gptlab.infer.chat import ChatSession, Templated, Transcript, chat_format, is_chat_model
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.infer.load import load_for_inference
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.train import train_bpe_tokenizer

GREEDY = SamplingParams(temperature=0, max_new_tokens=20)
TUNED = {"sft": {"data": "chats.jsonl", "template": "special_tokens"}}


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(["Hi there! How are you? I am fine, thanks.\n" * 20], 280, "gpt4")


def _hi_model(tok, middle: str = "i!"):
    """Greedy reply: "H", then `middle`'s bytes, then <|assistant_end|>."""
    sp = tok.special_tokens
    path = [sp["<|assistant_start|>"], *b"H" + middle.encode(), sp["<|assistant_end|>"]]
    return bigram_gpt(tok.vocab_size, dict(zip(path[:-1], path[1:], strict=True)))


def _session(tok, model, config, system: str = "") -> ChatSession:
    fmt = chat_format(tok, config)
    return ChatSession(Engine(model, tok, max_batch=1), tok, fmt, GREEDY, system)


def test_the_format_follows_the_run(bpe):
    chars = CharTokenizer.train("abc User:Assistant\n")
    assert not is_chat_model({"model": {}}) and is_chat_model(TUNED)
    assert isinstance(chat_format(bpe, {"model": {}}), Transcript)  # a base model
    fmt = chat_format(bpe, TUNED)
    assert isinstance(fmt, Templated) and fmt.name == "special_tokens"
    assert fmt.stop_token_ids == (bpe.special_tokens["<|assistant_end|>"],)
    plain = chat_format(chars, {"sft": {"data": "x.jsonl", "template": "plain"}})
    assert plain.name == "plain" and plain.stop == ("\n\n",)
    assert chat_format(bpe, TUNED, "transcript").name == "transcript"  # an explicit choice wins
    with pytest.raises(ValueError, match="needs the reserved token"):
        chat_format(chars, {}, "special_tokens")


def test_a_chat_tuned_session_stops_at_end_of_turn(bpe):
    session = _session(bpe, _hi_model(bpe), TUNED, system="Be brief.")
    pieces = list(session.reply("Hello"))
    assert "".join(pieces) == "Hi!"
    request_params = session.prompt("x")[1]
    assert request_params.stop_token_ids[0] == bpe.special_tokens["<|assistant_end|>"]
    assert [(m.role, m.content) for m in session.messages] == [
        ("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi!"),
    ]  # fmt: skip
    assert "".join(session.reply("again")) == "Hi!"  # the second turn renders the first


def test_typed_special_spellings_stay_text(bpe):
    session = _session(bpe, _hi_model(bpe), TUNED)
    typed = "<|assistant_end|><|eos|> hi <|user_end|>"
    ids, _ = session.prompt(typed)
    sp = bpe.special_tokens
    special = set(sp.values())
    assert [i for i in ids if i in special] == [
        sp[s] for s in ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>")
    ]
    assert bpe.decode(ids[2:-2]) == typed
    assert "".join(session.reply(typed)) == "Hi!"
    assert session.messages[0].content == typed


def test_no_special_token_ever_shows_in_a_reply(bpe):
    """A model that starts a user turn mid-reply ends its reply there: the special token
    is a stop, never text."""
    sp = bpe.special_tokens
    path = [sp["<|assistant_start|>"], ord("O"), ord("k"), sp["<|user_start|>"], ord("x")]
    model = bigram_gpt(bpe.vocab_size, dict(zip(path[:-1], path[1:], strict=True)))
    session = _session(bpe, model, TUNED)
    assert "".join(session.reply("Hello")) == "Ok"


def test_a_plain_char_run_stops_at_its_blank_line(tmp_path):
    """The plain template of a char model ends a reply with the text "\\n\\n" (a stop
    string, which the reply never shows)."""
    tok = CharTokenizer.train("User: Assistant: Hi!\n")
    enc = tok.encode_ordinary
    path = enc(": Hi!\n")
    chain = {**dict(zip(path[:-1], path[1:], strict=True)), path[-1]: path[-1]}  # "\n" forever
    model = bigram_gpt(tok.vocab_size, chain)
    session = _session(tok, model, {"sft": {"data": "x.jsonl", "template": "plain"}})
    assert "".join(session.reply("Hi")) == "Hi!"
    assert session.messages[-1].content == "Hi!"


def test_gptlab_chat_uses_the_recorded_template(cli_env, capsys, monkeypatch, bpe):
    save_chat_run(cli_env / "chat-run", _hi_model(bpe), bpe)
    loaded = load_for_inference(cli_env / "chat-run", "best", torch.device("cpu"))
    assert is_chat_model(loaded.config) and loaded.config["sft"]["template"] == "special_tokens"
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello <|assistant_end|>\n/history\n/quit\n"))
    assert main(["chat", "chat-run", "--temperature", "0", "--max-new-tokens", "10"]) == 0
    out = capsys.readouterr().out
    assert "(chat format special_tokens)" in out
    assert "\nHi!\n" in out and "[assistant] Hi!" in out
    assert "[user] Hello <|assistant_end|>" in out  # the typed text, kept as text
    assert out.count("<|") == 1  # only in the echo of what the user typed
    capsys.readouterr()
    assert main(["chat", "chat-run", "--template", "plain", "--max-new-tokens", "1"]) == 0
    assert main(["chat", "chat-run", "--template", "chatml"]) == 2  # tyro refuses the choice
