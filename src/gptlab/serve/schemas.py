"""Request bodies of the OpenAI-compatible API, their limits, and the one error shape.

Every request is checked here and nowhere else: field types and ranges by the pydantic models
below, then the checks that need the model (prompt length against the context, the tokenizer's
vocabulary) in `plan_*`. A failed check raises APIError, which the app turns into
    HTTP 4xx  {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
Fields OpenAI defines but gptlab does not implement (logprobs, echo, tools, ...) are refused
with a clear message rather than silently ignored; unknown fields are ignored, as OpenAI does.
gptlab extensions: top_k, min_p, repetition_penalty.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gptlab.infer.chat import ChatFormat, Message, chat_prompt
from gptlab.infer.config import SamplingParams
from gptlab.infer.load import prompt_ids
from gptlab.tokenizer.base import Tokenizer


class APIError(Exception):
    """A request the server refuses: status code, message, and the offending field."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for (set with `gptlab serve` flags)."""

    max_tokens: int = 1024
    """Most new tokens per choice (also the default when a chat request gives none)."""
    max_n: int = 8
    """Most choices per request (and at most the engine's batch)."""
    max_prompt_chars: int = 200_000
    """Longest prompt text accepted before tokenizing."""
    max_stop: int = 4
    """Most stop strings per request (OpenAI's limit)."""


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # gptlab extensions
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    # defined by OpenAI, not implemented: refused when set
    logprobs: Any = None
    logit_bias: Any = None
    tools: Any = None
    response_format: Any = None

    def unsupported(self) -> list[str]:
        return [k for k in ("logprobs", "logit_bias", "tools", "response_format")
                if getattr(self, k) not in (None, False, {}, [])]  # fmt: skip

    def stop_list(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(stop)


class CompletionRequest(_Common):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> list[str]:
        extra = [k for k in ("echo", "suffix") if getattr(self, k)]
        if self.best_of not in (None, 1):
            extra.append("best_of")
        return super().unsupported() + extra


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if isinstance(self.content, str):
            return self.content
        if any(part.get("type") != "text" for part in self.content):
            raise APIError(400, "only text content parts are supported", "messages")
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


@dataclasses.dataclass
class Plan:
    """A validated request: the prompts' ids and the sampling params for each."""

    prompts: list[list[int]]
    params: SamplingParams
    n: int


def _params(req: _Common, max_new: int, limits: Limits) -> SamplingParams:
    if bad := req.unsupported():
        raise APIError(400, f"{bad[0]} is not supported by this server", bad[0])
    if req.n > limits.max_n:
        raise APIError(400, f"n = {req.n} is more than this server's limit of {limits.max_n}", "n")
    stop = req.stop_list()
    if len(stop) > limits.max_stop or any(not s for s in stop):
        raise APIError(400, f"stop takes up to {limits.max_stop} non-empty strings", "stop")
    return SamplingParams(
        max_new_tokens=max_new, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
        min_p=req.min_p, repetition_penalty=req.repetition_penalty,
        frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
        stop=stop, seed=req.seed,
    )  # fmt: skip


def _max_new(
    asked: int | None, prompt_len: int, context: int, limits: Limits, param: str, prompt: str
) -> int:
    """New tokens per choice: what was asked, checked against the limit and the context."""
    room = context - prompt_len
    noun = "conversation" if prompt == "messages" else "prompt"
    if room < 1:
        raise APIError(
            400, f"the {noun} has {prompt_len} tokens but the model's context is {context}; "
            f"shorten the {noun}", prompt, "context_length_exceeded",
        )  # fmt: skip
    if asked is None:
        return min(limits.max_tokens, room)
    if asked > limits.max_tokens:
        raise APIError(
            400, f"{param} = {asked} is more than this server's limit of {limits.max_tokens}",
            param,
        )  # fmt: skip
    if asked > room:
        raise APIError(
            400, f"the model's context is {context} tokens: the {noun} has {prompt_len}, so "
            f"{param} can be at most {room}, not {asked}", param, "context_length_exceeded",
        )  # fmt: skip
    return asked


def _encode(tokenizer: Tokenizer, text: str, limits: Limits, param: str) -> list[int]:
    if len(text) > limits.max_prompt_chars:
        raise APIError(400, f"the {param} is longer than {limits.max_prompt_chars} characters",
                       param)  # fmt: skip
    try:
        return prompt_ids(tokenizer, text)
    except ValueError as e:
        raise APIError(400, str(e), param) from None


def plan_completion(
    req: CompletionRequest, tokenizer: Tokenizer, context: int, limits: Limits
) -> Plan:
    texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not texts:
        raise APIError(400, "prompt must not be an empty list", "prompt")
    prompts = [_encode(tokenizer, t, limits, "prompt") for t in texts]
    longest = max(len(p) for p in prompts)
    max_new = _max_new(req.max_tokens, longest, context, limits, "max_tokens", "prompt")
    return Plan(prompts, _params(req, max_new, limits), req.n)


def plan_chat(req: ChatCompletionRequest, fmt: ChatFormat, context: int, limits: Limits) -> Plan:
    messages = []
    for m in req.messages:
        text = m.text()
        if len(text) > limits.max_prompt_chars:
            raise APIError(400, f"a message is longer than {limits.max_prompt_chars} characters",
                           "messages")  # fmt: skip
        messages.append(Message("system" if m.role == "developer" else m.role, text))
    base = _params(req, 1, limits)
    try:
        ids, params = chat_prompt(fmt, messages, base)
    except ValueError as e:
        raise APIError(400, f"the messages cannot be encoded: {e}", "messages") from None
    asked = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    max_new = _max_new(asked, len(ids), context, limits, param, "messages")
    return Plan([ids], dataclasses.replace(params, max_new_tokens=max_new), req.n)
