"""Chat formats: how a list of messages becomes the prompt a model continues, and where the
reply ends.

A model only ever continues token sequences, so a conversation must be written out in the form
the model was trained on, ending where the assistant's reply begins.

    chat templates  for chat-tuned models: the template the run recorded when it was
                    finetuned (config["sft"]["template"], tokenizer/chat.py), special_tokens
                    for gptlab BPE tokenizers, plain text for the others. The reply stops at
                    the template's end of turn (<|assistant_end|>, the tokenizer's EOS, or
                    "\\n\\n" for a char model).
    transcript      for base models, which never saw a chat format: plain text
                        <system text>\\n\\nUser: hi\\nAssistant: hello\\nUser: ...\\nAssistant:
                    the reply stops at a new "\\nUser:" line. It works with any tokenizer,
                    character-level included, and is what a base model can best continue.

Whatever the format, message content is encoded as ordinary text (a user typing
"<|assistant_end|>" types characters, not the control token), and a reply also ends at any of
the tokenizer's special tokens, which the engine never turns into text: a special token in
the middle of a reply means the model has left the assistant's turn.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Literal

from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine, raise_failed
from gptlab.infer.load import prompt_ids
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.chat import (
    ChatTemplate,
    Message,
    chat_template,
    is_chat_tuned,
    recorded_template,
)

__all__ = ["ChatFormat", "ChatSession", "Message", "chat_format", "chat_prompt", "is_chat_model"]

TemplateName = Literal["auto", "transcript", "special_tokens", "plain"]


class ChatFormat(ABC):
    """Messages -> prompt ids; plus what ends the assistant's reply."""

    name: str
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def render(self, messages: list[Message]) -> list[int]:
        """Prompt ids for the conversation so far, ending where the assistant's reply begins."""


class Transcript(ChatFormat):
    name = "transcript"
    stop = ("\nUser:",)
    labels = {"user": "User", "assistant": "Assistant"}

    def render(self, messages: list[Message]) -> list[int]:
        parts = []
        for m in messages:
            if m.role == "system":
                parts.append(f"{m.content}\n\n")
            else:
                parts.append(f"{self.labels[m.role]}: {m.content}\n")
        text = "".join(parts) + "Assistant:"
        ids = self.tokenizer.encode_ordinary(text)
        bos = self.tokenizer.bos_id
        return [bos, *ids] if bos is not None else ids


class Templated(ChatFormat):
    """A chat template (tokenizer/chat.py) as a chat format: its prompt and its stops."""

    def __init__(self, template: ChatTemplate) -> None:
        super().__init__(template.tokenizer)
        self.template = template
        self.name = template.name
        self.stop = template.stop_strings
        self.stop_token_ids = template.stop_token_ids

    def render(self, messages: list[Message]) -> list[int]:
        return self.template.prompt(messages)


def chat_format(
    tokenizer: Tokenizer, config: dict[str, Any], name: TemplateName = "auto"
) -> ChatFormat:
    """The chat format to use: `name`, or with 'auto' the template a chat-tuned run recorded
    (config["sft"]["template"]), else the transcript (a base model)."""
    if name == "auto":
        template = recorded_template(config, tokenizer)
        return Transcript(tokenizer) if template is None else Templated(template)
    if name == "transcript":
        return Transcript(tokenizer)
    if name in ("special_tokens", "plain"):
        return Templated(chat_template(tokenizer, name))
    raise ValueError(
        f"unknown chat template {name!r}; use one of auto, transcript, special_tokens, plain"
    )


def chat_prompt(
    fmt: ChatFormat, messages: list[Message], params: SamplingParams
) -> tuple[list[int], SamplingParams]:
    """Prompt ids of a conversation, and params that also stop where the format's reply ends
    (and at every special token, so none is ever shown as text)."""
    special = tuple(sorted(fmt.tokenizer.special_tokens.values()))
    params = dataclasses.replace(
        params,
        stop=tuple(dict.fromkeys((*params.stop, *fmt.stop))),
        stop_token_ids=tuple(
            dict.fromkeys((*params.stop_token_ids, *fmt.stop_token_ids, *special))
        ),
    )
    return fmt.render(messages), params


def is_chat_model(config: dict[str, Any]) -> bool:
    """Whether the run was chat-tuned (its config records the template it learned)."""
    return is_chat_tuned(config)


class ChatSession:
    """A conversation with one model: its history, and replies streamed from the engine.

    With a chat format, the history is a list of messages rendered by the format each turn.
    Without one (a base model), the history is plain text: each input is appended and the
    model continues it.
    """

    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        fmt: ChatFormat | None,
        params: SamplingParams,
        system: str = "",
    ) -> None:
        self.engine, self.tokenizer, self.fmt = engine, tokenizer, fmt
        self.params, self.system = params, system
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = [Message("system", self.system)] if self.system else []
        self.text = ""  # the running text of a base-model session

    def prompt(self, user_text: str) -> tuple[list[int], SamplingParams]:
        """Prompt ids for the next reply and the params (with the format's stops)."""
        if self.fmt is None:
            return prompt_ids(self.tokenizer, self.text + user_text), self.params
        return chat_prompt(self.fmt, [*self.messages, Message("user", user_text)], self.params)

    def reply(self, user_text: str) -> Iterator[str]:
        """Stream the reply's text; the turn joins the history once it is complete."""
        ids, params = self.prompt(user_text)
        request = self.engine.submit(ids, params)
        pieces = []
        while self.engine.busy:
            for event in self.engine.step():
                text = event.text
                if self.fmt is not None and not "".join(pieces):
                    text = text.lstrip()  # a reply after "Assistant:" starts with a space
                pieces.append(text)
                yield text
        raise_failed([request])
        if request.cancelled:
            return
        reply = "".join(pieces)
        if self.fmt is None:
            self.text += user_text + reply
        else:
            self.messages += [Message("user", user_text), Message("assistant", reply.strip())]
