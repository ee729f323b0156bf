"""Chat formats: how a list of messages becomes the prompt a model continues.

A model only ever continues token sequences, so a conversation must be written out in the form
the model was trained on, ending where the assistant's reply begins; a format also says where
the reply ends (a stop token or stop string).

    transcript      for base models, which never saw a chat format: plain text
                        <system text>\\n\\nUser: hi\\nAssistant: hello\\nUser: ...\\nAssistant:
                    the reply stops at a new "\\nUser:" line. It works with any tokenizer,
                    character-level included, and is what a base model can best continue.
    special_tokens  for chat-tuned models: the reserved tokens of gptlab's BPE tokenizers,
                        <|bos|><|system_start|>...<|system_end|><|user_start|>hi<|user_end|>
                        <|assistant_start|>hello<|assistant_end|>...<|assistant_start|>
                    the reply stops at <|assistant_end|>. Chat finetuning (a later stage)
                    trains this format and records it in the run's config as
                    "chat_template": "special_tokens"; `chat_format` picks it from there.
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

Role = Literal["system", "user", "assistant"]
TemplateName = Literal["auto", "transcript", "special_tokens"]


@dataclasses.dataclass(frozen=True)
class Message:
    role: Role
    content: str


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


class SpecialTokens(ChatFormat):
    name = "special_tokens"
    needs = ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>",
             "<|assistant_end|>", "<|system_start|>", "<|system_end|>")  # fmt: skip

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        missing = [t for t in self.needs if t not in tokenizer.special_tokens]
        if missing:
            raise ValueError(
                f"the special_tokens chat format needs the tokenizer's {missing[0]} token, which "
                f"this {tokenizer.describe()} lacks; use the transcript format"
            )
        self.ids = {t: tokenizer.special_tokens[t] for t in self.needs}
        self.stop_token_ids = (self.ids["<|assistant_end|>"],)

    def render(self, messages: list[Message]) -> list[int]:
        ids = [self.ids["<|bos|>"]]
        for m in messages:
            ids.append(self.ids[f"<|{m.role}_start|>"])
            ids.extend(self.tokenizer.encode_ordinary(m.content))
            ids.append(self.ids[f"<|{m.role}_end|>"])
        ids.append(self.ids["<|assistant_start|>"])
        return ids


FORMATS = {"transcript": Transcript, "special_tokens": SpecialTokens}


def chat_format(tokenizer: Tokenizer, config: dict[str, Any], name: TemplateName = "auto"):
    """The chat format to use: `name`, or with 'auto' the one the run's config records
    ("chat_template"), else the transcript (a base model)."""
    if name == "auto":
        name = config.get("chat_template", "transcript")
    if name not in FORMATS:
        raise ValueError(f"unknown chat template {name!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[name](tokenizer)


def chat_prompt(
    fmt: ChatFormat, messages: list[Message], params: SamplingParams
) -> tuple[list[int], SamplingParams]:
    """Prompt ids of a conversation, and params that also stop where the format's reply ends."""
    params = dataclasses.replace(
        params,
        stop=tuple(dict.fromkeys((*params.stop, *fmt.stop))),
        stop_token_ids=tuple(dict.fromkeys((*params.stop_token_ids, *fmt.stop_token_ids))),
    )
    return fmt.render(messages), params


def is_chat_model(config: dict[str, Any]) -> bool:
    """Whether the run was chat-tuned (its config names the format it learned)."""
    return "chat_template" in config


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
                pieces.append(event.text)
                yield event.text
        raise_failed([request])
        if request.cancelled:
            return
        reply = "".join(pieces)
        if self.fmt is None:
            self.text += user_text + reply
        else:
            self.messages += [Message("user", user_text), Message("assistant", reply.strip())]
