"""Request bodies of the OpenAI-compatible API, their limits, and the one error shape.

Every request is checked here: field types (and this API's own bounds, such as OpenAI's
temperature <= 2) by the pydantic models below; the ranges of the sampling fields by
SamplingParams itself (infer/config.py), the one place that `gptlab sample` and `gptlab chat`
share; then, in `plan_*`, the request as a whole (how many prompts, choices, messages and stop
strings) before any text is encoded, and what needs the model (its tokenizer). The body's size
is capped before it is even parsed (body_limit.py), and the queue in the worker (worker.py).
A failed check raises APIError, which the app turns into
    HTTP 4xx  {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
A prompt longer than the context, or one that max_tokens would carry past it, is not an error:
the engine slides the window, as `gptlab sample` does, and `usage.prompt_tokens_dropped` says
how many prompt tokens the model no longer saw.
Fields OpenAI defines but gptlab does not implement (logprobs, echo, tools, ...) are refused
with a clear message rather than silently ignored; unknown fields are ignored, as OpenAI does.
gptlab extensions: top_k, min_p, repetition_penalty.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from gptlab.infer.chat import ChatFormat, Message, chat_prompt
from gptlab.infer.config import InvalidSampling, SamplingParams
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
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for (set with `gptlab serve` flags)."""

    max_tokens: int = 1024
    """Most new tokens per choice (also the most a chat request gets when it gives none)."""
    max_n: int = 8
    """Most choices per prompt (and at most the engine's batch)."""
    max_choices: int = 32
    """Most choices per request: prompts x n."""
    max_prompt_chars: int = 200_000
    """Longest prompt text (or message) accepted before tokenizing."""
    max_messages: int = 256
    """Most messages in a chat request."""
    max_stop: int = 4
    """Most stop strings per request (OpenAI's limit)."""
    max_body_bytes: int = 4 * 2**20
    """Largest request body, checked before it is read in full or parsed."""


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    # types here, and this API's own bounds; SamplingParams checks the ranges of the rest
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, le=2.0)
    top_p: float = 1.0
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None  # strict: "5", 5.0 and true are not seeds
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # gptlab extensions
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = Field(1.0, le=10.0)
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


# SamplingParams' field -> the request field to blame for it
_PARAM = {"max_new_tokens": "max_tokens"}


def _params(req: _Common, max_new: int, limits: Limits) -> SamplingParams:
    if bad := req.unsupported():
        raise APIError(400, f"{bad[0]} is not supported by this server", bad[0])
    if req.n > limits.max_n:
        raise APIError(400, f"n = {req.n} is more than this server's limit of {limits.max_n}", "n")
    stop = req.stop_list()
    if len(stop) > limits.max_stop:
        raise APIError(400, f"stop takes up to {limits.max_stop} strings, not {len(stop)}", "stop")
    try:
        return SamplingParams(
            max_new_tokens=max_new, temperature=req.temperature, top_k=req.top_k,
            top_p=req.top_p, min_p=req.min_p, repetition_penalty=req.repetition_penalty,
            frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
            stop=stop, seed=req.seed,
        )  # fmt: skip
    except InvalidSampling as e:
        raise APIError(400, str(e), _PARAM.get(e.field, e.field)) from None


def _max_new(asked: int | None, prompt_len: int, context: int, limits: Limits, param: str) -> int:
    """New tokens per choice. The window slides past the context, so only the server's limit
    caps what is asked; when nothing is, what is left of the context (at least the half of it
    that a slide frees), up to the limit."""
    if asked is None:
        return min(limits.max_tokens, max(context - prompt_len, context // 2))
    if asked > limits.max_tokens:
        raise APIError(
            400, f"{param} = {asked} is more than this server's limit of {limits.max_tokens}",
            param,
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
    params = _params(req, 1, limits)  # checks n before n is multiplied
    if len(texts) * req.n > limits.max_choices:
        raise APIError(
            400, f"{len(texts)} prompts x n = {req.n} is {len(texts) * req.n} choices; this "
            f"server's limit is {limits.max_choices} per request", "prompt",
        )  # fmt: skip
    prompts = [_encode(tokenizer, t, limits, "prompt") for t in texts]
    longest = max(len(p) for p in prompts)
    max_new = _max_new(req.max_tokens, longest, context, limits, "max_tokens")
    return Plan(prompts, dataclasses.replace(params, max_new_tokens=max_new), req.n)


def plan_chat(req: ChatCompletionRequest, fmt: ChatFormat, context: int, limits: Limits) -> Plan:
    if len(req.messages) > limits.max_messages:
        raise APIError(
            400, f"{len(req.messages)} messages is more than this server's limit of "
            f"{limits.max_messages}", "messages",
        )  # fmt: skip
    base = _params(req, 1, limits)
    messages = []
    for m in req.messages:
        text = m.text()
        if len(text) > limits.max_prompt_chars:
            raise APIError(400, f"a message is longer than {limits.max_prompt_chars} characters",
                           "messages")  # fmt: skip
        messages.append(Message("system" if m.role == "developer" else m.role, text))
    try:
        ids, params = chat_prompt(fmt, messages, base)
    except ValueError as e:
        raise APIError(400, f"the messages cannot be encoded: {e}", "messages") from None
    asked = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    max_new = _max_new(asked, len(ids), context, limits, param)
    return Plan([ids], dataclasses.replace(params, max_new_tokens=max_new), req.n)
