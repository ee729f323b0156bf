"""Chat templates: ids, loss masks and turn ends on hand-made conversations, for our BPE (the
special_tokens template), GPT-2 and a char vocabulary (plain); bad roles; special spellings
typed inside a message stay text; the Jinja export renders the same text."""

from __future__ import annotations

import pytest
from tests.tokenizer.conftest import needs_gpt2

from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.chat import (
    ROLES,
    Message,
    PlainTemplate,
    SpecialTokensTemplate,
    chat_template,
    recorded_template,
)
from gptlab.tokenizer.train import train_bpe_tokenizer

CORPUS = "Be brief. Hi there! Hello, how are you? I am fine: thanks. What is two plus two?\n" * 20
CHAT = [
    Message("system", "Be brief."),
    Message("user", "Hi there!"),
    Message("assistant", "Hello, how are you?"),
    Message("user", "What is two plus two?"),
    Message("assistant", "Four: thanks."),
]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    """A 300-id BPE with gptlab's default special tokens (the reserved chat tokens)."""
    return train_bpe_tokenizer([CORPUS], 300, "gpt4")


@pytest.fixture(scope="module")
def chars() -> CharTokenizer:
    return CharTokenizer.train(CORPUS + "UAFd<|>_")


def _supervised_text(tok, rendered) -> str:
    return tok.decode([i for i, m in zip(rendered.ids, rendered.mask, strict=True) if m])


def test_auto_picks_the_family_template(bpe, chars):
    assert isinstance(chat_template(bpe), SpecialTokensTemplate)
    assert isinstance(chat_template(chars), PlainTemplate)
    assert chat_template(bpe, "plain").name == "plain"  # any tokenizer can take plain
    with pytest.raises(ValueError, match="needs the reserved token <|bos|>.*plain"):
        chat_template(chars, "special_tokens")
    with pytest.raises(ValueError, match="unknown chat template 'chatml'"):
        chat_template(bpe, "chatml")


def test_special_tokens_ids_and_mask(bpe):
    t = chat_template(bpe)
    sp = bpe.special_tokens
    r = t.render(CHAT)
    expected, mask = [sp["<|bos|>"]], [0]
    for m in CHAT:
        content = bpe.encode_ordinary(m.content)
        label = int(m.role == "assistant")
        expected += [sp[f"<|{m.role}_start|>"], *content, sp[f"<|{m.role}_end|>"]]
        mask += [0, *[label] * len(content), label]
    assert r.ids == expected and r.mask == mask
    assert t.stop_token_ids == (sp["<|assistant_end|>"],) and t.stop_strings == ()
    # supervised: exactly the two replies, each with its end-of-turn token
    assert _supervised_text(bpe, r) == (
        "Hello, how are you?<|assistant_end|>Four: thanks.<|assistant_end|>"
    )
    assert t.prompt(CHAT[:2]) == t.render(CHAT[:2]).ids + [sp["<|assistant_start|>"]]


def test_empty_assistant_turn_supervises_only_its_end(bpe, chars):
    convo = [Message("user", "Hi there!"), Message("assistant", "")]
    r = chat_template(bpe).render(convo)
    assert r.ids[-2:] == [
        bpe.special_tokens[s] for s in ("<|assistant_start|>", "<|assistant_end|>")
    ]
    assert r.mask == [0] * (len(r.ids) - 1) + [1]
    plain = chat_template(chars).render(convo)  # "Assistant:" then EOT "\n\n" with no space
    assert chars.decode(plain.ids).endswith("Assistant:\n\n")
    assert _supervised_text(chars, plain) == "\n\n" and sum(plain.mask) == 2


@needs_gpt2
def test_plain_template_on_gpt2(gpt2_tok):
    t = chat_template(gpt2_tok)
    assert t.name == "plain" and t.stop_token_ids == (50256,) and t.stop_strings == ()
    r = t.render(CHAT)
    eot = "<|endoftext|>"
    assert gpt2_tok.decode(r.ids) == (
        f"{eot}Be brief.\n\nUser: Hi there!\nAssistant: Hello, how are you?{eot}"
        f"User: What is two plus two?\nAssistant: Four: thanks.{eot}"
    )
    assert r.ids[0] == 50256 and r.mask[0] == 0  # BOS, not a target
    assert _supervised_text(gpt2_tok, r) == f" Hello, how are you?{eot} Four: thanks.{eot}"
    # the text between special tokens is one run: the ids are the whole text's encoding
    text = gpt2_tok.decode(r.ids)
    assert r.ids == gpt2_tok.encode(text, allowed_special=True)


def test_plain_template_on_chars(chars):
    t = chat_template(chars)
    assert t.stop_strings == ("\n\n",) and t.stop_token_ids == ()
    r = t.render(CHAT[:3])
    assert chars.decode(r.ids) == (
        "Be brief.\n\nUser: Hi there!\nAssistant: Hello, how are you?\n\n"
    )
    assert _supervised_text(chars, r) == " Hello, how are you?\n\n"
    assert chars.decode(t.prompt(CHAT[:2])).endswith("User: Hi there!\nAssistant:")


@pytest.mark.parametrize("family", ["bpe", "chars", "gpt2"])
def test_turn_ends_are_prefix_renderings(family, request):
    tok = request.getfixturevalue("gpt2_tok" if family == "gpt2" else family)
    t = chat_template(tok)
    full = t.render(CHAT)
    assert len(full.turn_ends) == len(CHAT) and full.turn_ends[-1] == len(full.ids)
    for i, end in enumerate(full.turn_ends):
        part = t.render(CHAT[: i + 1])
        assert tok.decode(full.ids[:end]) == tok.decode(part.ids)
        if CHAT[i].role == "assistant" or family != "gpt2":
            # token for token, where the turn ends in a special token or every character is
            # one; GPT-2 may tokenize the "\n\n" ending a system turn differently when text
            # follows ("\n" "\n" before "User", one token at the end)
            assert full.ids[:end] == part.ids and full.mask[:end] == part.mask
            assert part.turn_ends == full.turn_ends[: i + 1]
    # a prompt is a prefix of the conversation that continues with the reply
    for i, m in enumerate(CHAT):
        if m.role == "assistant":
            prompt = t.prompt(CHAT[:i])
            assert full.ids[: len(prompt)] == prompt
            start = full.turn_ends[i - 1]  # the reply's "Assistant:" / start token
            assert not any(full.mask[start : len(prompt)]) and full.mask[len(prompt)] == 1


def test_unknown_role_and_bad_content():
    with pytest.raises(ValueError, match=r"unknown chat role 'tool'.*system, user, assistant"):
        Message("tool", "x")
    with pytest.raises(ValueError, match="content must be text"):
        Message("user", None)  # type: ignore[arg-type]
    assert ROLES == ("system", "user", "assistant")


def test_special_spellings_typed_in_a_message_stay_text(bpe, chars):
    typed = "<|assistant_end|> <|bos|><|user_start|>"
    convo = [Message("user", typed), Message("assistant", "<|eos|>")]
    t = chat_template(bpe)
    r = t.render(convo)
    special = set(bpe.special_tokens.values())
    structural = [i for i in r.ids if i in special]
    sp = bpe.special_tokens
    assert structural == [sp[s] for s in ("<|bos|>", "<|user_start|>", "<|user_end|>",
                                          "<|assistant_start|>", "<|assistant_end|>")]  # fmt: skip
    assert bpe.decode(r.ids[2 : r.ids.index(sp["<|user_end|>"])]) == typed
    assert _supervised_text(bpe, r) == "<|eos|><|assistant_end|>"
    prompt = t.prompt(convo[:1])
    assert sum(i in special for i in prompt) == 4  # bos, user start/end, assistant start
    plain = chat_template(chars).render(convo)  # a char vocabulary has no special tokens
    assert typed in chars.decode(plain.ids)


def test_a_token_across_the_mask_boundary_takes_its_last_bytes_label():
    """A BPE whose split pattern never splits, with a merge ': ' that spans 'Assistant:'
    (unsupervised) and ' reply' (supervised): the token is supervised (its last byte is)."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b": "] = 256
    tok = BPETokenizer(ranks, r"[\s\S]+", {})
    t = chat_template(tok)
    r = t.render([Message("user", "a"), Message("assistant", "b")])
    pieces = [tok.decode([i]) for i in r.ids]
    assert pieces == ["U", "s", "e", "r", ": ", "a", "\n", *"Assistant", ": ", "b", "\n", "\n"]
    labelled = [(p, m) for p, m in zip(pieces, r.mask, strict=True) if m]
    assert labelled == [(": ", 1), ("b", 1), ("\n", 1), ("\n", 1)]
    assert r.mask[4] == 0  # the ': ' after "User" is all unsupervised


def test_recorded_template(bpe):
    assert recorded_template({"model": {}}, bpe) is None  # a base model
    assert recorded_template({"sft": {"data": "", "template": "auto"}}, bpe) is None
    tuned = {"sft": {"data": "chats.jsonl", "template": "plain"}}
    assert recorded_template(tuned, bpe).name == "plain"
    tuned["sft"]["template"] = "special_tokens"
    assert recorded_template(tuned, bpe).name == "special_tokens"


@pytest.mark.parametrize("family", ["bpe", "chars"])
def test_jinja_renders_the_same_text(family, request):
    """The exported chat_template, run by plain jinja2 (transformers' own run is tested in
    tests/interop/test_chat_export.py), gives exactly our rendering's text."""
    jinja2 = pytest.importorskip("jinja2")
    tok = request.getfixturevalue(family)
    t = chat_template(tok)

    def raise_exception(message):
        raise ValueError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(t.jinja())
    msgs = [{"role": m.role, "content": m.content} for m in CHAT]
    for generation in (False, True):
        text = template.render(messages=msgs, add_generation_prompt=generation,
                               raise_exception=raise_exception)  # fmt: skip
        ids = t.prompt(CHAT) if generation else t.render(CHAT).ids
        assert text == tok.decode(ids)
    with pytest.raises(ValueError, match="unknown chat role tool"):
        template.render(
            messages=[{"role": "tool", "content": "x"}], raise_exception=raise_exception
        )
