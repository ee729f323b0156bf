"""Chat templates: a conversation (system, user and assistant turns) -> token ids + a loss mask.

A model continues token sequences, so a chat model learns one written form of a conversation
and must be prompted in exactly that form. Each tokenizer family gets one template:

    special_tokens  gptlab BPE tokenizers, which reserve chat tokens (tokenizer/train.py):
                        <|bos|><|system_start|>Be brief.<|system_end|>
                        <|user_start|>Hi<|user_end|><|assistant_start|>Hello<|assistant_end|>
                    the reply ends at the token <|assistant_end|>.
    plain           everything else (char models, GPT-2 / tiktoken encodings, HF tokenizers):
                        [BOS]Be brief.\\n\\nUser: Hi\\nAssistant: Hello[EOT]
                    EOT is the tokenizer's EOS token when it has one (GPT-2: <|endoftext|>),
                    else the text "\\n\\n" (char models); BOS only when the tokenizer has one.

The mask is 1 exactly on what the assistant is trained to write: its content and its
end-of-turn (EOT) token; 0 on everything else (BOS, the system and user turns, role markers).

Two rules keep training, inference and Hugging Face's `apply_chat_template` identical:
- Text between two special tokens is tokenized as one run, the way an HF tokenizer tokenizes
  the rendered string, so the exported Jinja template (`jinja()`) gives the same ids. The
  mask is then derived from byte offsets (`Tokenizer.token_bytes()`): a token whose bytes
  straddle a supervised/unsupervised boundary (a merge across "Assistant:" and " Hello",
  which the split patterns normally prevent) takes the label of its last byte, and belongs to
  the message that holds its last byte. So `turn_ends[i]`, the index just past message i's
  last token, cuts the conversation at the end of turn i: the ids before it decode to exactly
  the text of messages[: i + 1] and are token for token their own rendering wherever the turn
  ends in a special token (every turn of special_tokens, every assistant turn with an EOS) or
  every character is a token (char); elsewhere the split may differ at the cut (GPT-2 writes
  a system turn's final "\n\n" as two tokens before "User", as one at the very end).
- Message content is always encoded as ordinary text (`encode_ordinary`): "<|assistant_end|>"
  typed by a user stays those 17 characters, never the control token. (HF's
  `apply_chat_template` does interpret such spellings in content; ours never does.)
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.train import BOS, CHAT_TOKENS

ROLES = ("system", "user", "assistant")
RESERVED = (BOS, *CHAT_TOKENS)  # what the special_tokens template needs from a tokenizer


@dataclasses.dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str  # one of ROLES
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(
                f"unknown chat role {self.role!r}; a message's role must be one of "
                f"{', '.join(ROLES)}"
            )
        if not isinstance(self.content, str):
            raise ValueError(
                f"a {self.role} message's content must be text, got {type(self.content).__name__}"
            )


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A rendered conversation: its ids, the loss mask and where each message ends."""

    ids: list[int]
    mask: list[int]  # 1 where ids[t] is a supervised target (assistant content and its EOT)
    turn_ends: list[int]  # ids[: turn_ends[i]] renders messages[: i + 1] (see below)


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Part of a rendering: a special token (`token`) or text, its label, its message."""

    text: str = ""
    token: int | None = None
    label: int = 0
    message: int = -1  # index of the message it belongs to; -1: before the first (BOS)


class ChatTemplate(ABC):
    """Messages -> ids and mask; plus what starts and ends an assistant reply."""

    name: str
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._token_bytes: np.ndarray | None = None  # (V,), read on first use

    @abstractmethod
    def _pieces(self, messages: Sequence[Message]) -> list[_Piece]:
        """The conversation as special tokens and text, labelled."""

    @abstractmethod
    def _reply_start(self, n_messages: int) -> list[_Piece]:
        """What the prompt adds after the conversation: the start of the assistant's turn."""

    @abstractmethod
    def jinja(self) -> str:
        """A Hugging Face `chat_template` (Jinja) that renders exactly as this template."""

    def render(self, messages: Sequence[Message]) -> Rendered:
        """The whole conversation: ids, mask and turn ends."""
        return self._assemble(self._pieces(_checked(messages)), len(messages))

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """Ids of the conversation followed by the start of the assistant's reply."""
        messages = _checked(messages)
        pieces = self._pieces(messages) + self._reply_start(len(messages))
        return self._assemble(pieces, len(messages)).ids

    # -- pieces -> ids ----------------------------------------------------------------------

    def _assemble(self, pieces: list[_Piece], n_messages: int) -> Rendered:
        ids: list[int] = []
        labels: list[int] = []
        owners: list[int] = []  # message index of each id
        for is_token, group in itertools.groupby(pieces, key=lambda p: p.token is not None):
            group = list(group)
            if is_token:
                for p in group:
                    ids.append(p.token)  # type: ignore[arg-type]
                    labels.append(p.label)
                    owners.append(p.message)
            else:
                run_ids, run_labels, run_owners = self._encode_run(group)
                ids += run_ids
                labels += run_labels
                owners += run_owners
        turn_ends = [bisect.bisect_right(owners, i) for i in range(n_messages)]
        return Rendered(ids, labels, turn_ends)

    def _encode_run(self, pieces: list[_Piece]) -> tuple[list[int], list[int], list[int]]:
        """Encode consecutive text pieces as one text; each token takes the label and the
        message of the piece that holds its last byte."""
        ends, total = [], 0  # byte offset where each piece ends
        for p in pieces:
            total += len(p.text.encode("utf-8"))
            ends.append(total)
        if total == 0:
            return [], [], []
        ids = self.tokenizer.encode_ordinary("".join(p.text for p in pieces))
        labels, owners = [], []
        for end in self._token_ends(ids, total):
            k = min(bisect.bisect_left(ends, end), len(pieces) - 1)  # the piece of byte end-1
            labels.append(pieces[k].label)
            owners.append(pieces[k].message)
        return ids, labels, owners

    def _token_ends(self, ids: list[int], total: int) -> list[int]:
        """Byte offset just past each token of a run of `total` bytes."""
        if self._token_bytes is None:
            self._token_bytes = self.tokenizer.token_bytes()
        ends = np.cumsum(self._token_bytes[np.asarray(ids, dtype=np.int64)]).tolist()
        if ends and ends[-1] == total:
            return ends
        # A tokenizer whose tokens' bytes depend on context (SentencePiece's "▁" prefix space)
        # does not add up: measure each prefix's decoded text instead (approximate there).
        lengths = [
            len(self.tokenizer.decode(ids[: k + 1]).encode("utf-8")) for k in range(len(ids))
        ]
        return [max(1, min(n, total)) for n in itertools.accumulate(lengths, max)]


class SpecialTokensTemplate(ChatTemplate):
    """gptlab BPE tokenizers: each message between its role's reserved start and end tokens."""

    name = "special_tokens"

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        missing = [t for t in RESERVED if t not in tokenizer.special_tokens]
        if missing:
            raise ValueError(
                f"the special_tokens chat template needs the reserved token {missing[0]}, which "
                f"this {tokenizer.describe()} lacks; use the plain template"
            )
        self.ids = {t: tokenizer.special_tokens[t] for t in RESERVED}
        self.stop_token_ids = (self.ids["<|assistant_end|>"],)

    def _pieces(self, messages: Sequence[Message]) -> list[_Piece]:
        pieces = [_Piece(token=self.ids[BOS])]
        for i, m in enumerate(messages):
            label = int(m.role == "assistant")
            pieces += [
                _Piece(token=self.ids[f"<|{m.role}_start|>"], message=i),
                _Piece(m.content, label=label, message=i),
                _Piece(token=self.ids[f"<|{m.role}_end|>"], label=label, message=i),
            ]
        return pieces

    def _reply_start(self, n_messages: int) -> list[_Piece]:
        return [_Piece(token=self.ids["<|assistant_start|>"], message=n_messages)]

    def jinja(self) -> str:
        return (
            _jinja_role_check()
            + "{{ "
            + _literal(BOS)
            + " }}{% for message in messages %}{{ '<|' + message['role'] + '_start|>' + "
            "message['content'] + '<|' + message['role'] + '_end|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ " + _literal("<|assistant_start|>") + " }}{% endif %}"
        )


class PlainTemplate(ChatTemplate):
    """Any tokenizer: a "User:/Assistant:" transcript, each reply ended by EOS (or "\\n\\n")."""

    name = "plain"

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        self.eot_id = tokenizer.eos_id
        self.eot_text = "\n\n" if self.eot_id is None else ""
        self.stop_token_ids = () if self.eot_id is None else (self.eot_id,)
        self.stop_strings = (self.eot_text,) if self.eot_text else ()

    def _pieces(self, messages: Sequence[Message]) -> list[_Piece]:
        bos = self.tokenizer.bos_id
        pieces = [] if bos is None else [_Piece(token=bos)]
        for i, m in enumerate(messages):
            if m.role == "system":
                pieces.append(_Piece(f"{m.content}\n\n", message=i))
            elif m.role == "user":
                pieces.append(_Piece(f"User: {m.content}\n", message=i))
            else:
                reply = f" {m.content}" if m.content else ""
                pieces += [
                    _Piece("Assistant:", message=i),
                    _Piece(reply + self.eot_text, label=1, message=i),
                ]
                if self.eot_id is not None:
                    pieces.append(_Piece(token=self.eot_id, label=1, message=i))
        return pieces

    def _reply_start(self, n_messages: int) -> list[_Piece]:
        return [_Piece("Assistant:", message=n_messages)]

    def jinja(self) -> str:
        bos, eos = self.tokenizer.bos, self.tokenizer.eos
        eot = _literal(eos if eos is not None else self.eot_text)
        return (
            _jinja_role_check()
            + ("" if bos is None else "{{ " + _literal(bos) + " }}")
            + "{% for message in messages %}"
            "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
            "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
            "{% else %}{{ 'Assistant:' }}{% if message['content'] %}"
            "{{ ' ' + message['content'] }}{% endif %}{{ " + eot + " }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
        )


TEMPLATES: dict[str, type[ChatTemplate]] = {
    "special_tokens": SpecialTokensTemplate,
    "plain": PlainTemplate,
}


def chat_template(tokenizer: Tokenizer, name: str = "auto") -> ChatTemplate:
    """The template `name` for this tokenizer; 'auto' picks the tokenizer family's:
    special_tokens when it has gptlab's reserved chat tokens, else plain."""
    if name == "auto":
        has_all = all(t in tokenizer.special_tokens for t in RESERVED)
        name = "special_tokens" if has_all else "plain"
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; use auto, {', '.join(TEMPLATES)}")
    return TEMPLATES[name](tokenizer)


def is_chat_tuned(config: dict[str, Any]) -> bool:
    """Whether a stored run config is a chat finetune's (its sft.data is set)."""
    sft = config.get("sft")
    return isinstance(sft, dict) and bool(sft.get("data"))


def recorded_template(config: dict[str, Any], tokenizer: Tokenizer) -> ChatTemplate | None:
    """The template a chat-finetuned run learned (config["sft"]["template"]), or None for a
    base model."""
    if not is_chat_tuned(config):
        return None
    return chat_template(tokenizer, str(config["sft"].get("template", "auto")))


# -- helpers -------------------------------------------------------------------------------


def _checked(messages: Sequence[Message]) -> list[Message]:
    """The messages as Messages; ValueError naming a bad one (Message checks its role)."""
    out = []
    for m in messages:
        if not isinstance(m, Message):
            raise ValueError(f"expected chat Messages, got {type(m).__name__}")
        out.append(m)
    return out


def _literal(text: str) -> str:
    """`text` as a single-quoted Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def _jinja_role_check() -> str:
    """Jinja that raises (HF's raise_exception) on a role outside ROLES."""
    roles = "[" + ", ".join(_literal(r) for r in ROLES) + "]"
    return (
        "{% for message in messages %}{% if message['role'] not in " + roles + " %}"
        "{{ raise_exception('unknown chat role ' + message['role'] + '; use one of "
        + ", ".join(ROLES)
        + "') }}{% endif %}{% endfor %}"
    )
