"""What the engine (infer/engine.py) hands back: a Request (a prompt and its n samples), each
sample's Sequence (its tokens, cache row and text so far) and the Event of each new token.

These are plain records that the engine fills in as it runs, and that its callers (chat,
sample, serve) read. They sit apart from the engine so that engine.py reads as the scheduling
loop alone; engine.py imports them back, so `from gptlab.infer.engine import Request` works.
"""

from __future__ import annotations

import dataclasses

import torch

from gptlab.infer.config import SamplingParams
from gptlab.infer.text import TextStream


@dataclasses.dataclass(eq=False)
class Sequence:
    """One sample of a request: its tokens, its row in the cache, its text so far."""

    request: Request
    index: int  # which of the request's n samples
    tokens: list[int]  # prompt + generated, the last one not yet in the cache
    generator: torch.Generator
    stream: TextStream | None
    row: int = -1
    generated: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length" once finished
    window_start: int = 0  # tokens[window_start:] are in the row (moves on at each shift)


@dataclasses.dataclass(eq=False)
class Request:
    """A prompt and its n samples. `sequences` fill in as the engine runs."""

    id: int
    prompt: list[int]
    params: SamplingParams
    n: int
    cropped: int = 0  # oldest prompt tokens cut at submit: the prompt exceeded the context
    sequences: list[Sequence] = dataclasses.field(default_factory=list)
    cancelled: bool = False
    error: Exception | None = None  # why it failed; its rows are free again

    @property
    def done(self) -> bool:
        return (
            self.cancelled
            or self.error is not None
            or (len(self.sequences) == self.n and all(s.finish_reason for s in self.sequences))
        )

    @property
    def prompt_tokens_dropped(self) -> int:
        """Prompt tokens that some sample no longer saw: cut at submit, or slid out of its
        window by a shift."""
        slid = max((min(s.window_start, len(self.prompt)) for s in self.sequences), default=0)
        return self.cropped + slid


@dataclasses.dataclass(frozen=True)
class Event:
    """One new token of one sample, and the text it released ('' while held back)."""

    request: Request
    index: int
    token: int | None  # None for a stop token or a final flush, which add no token
    text: str
    finish_reason: str | None


def raise_failed(requests: list[Request]) -> None:
    """Raise the error of the first of these requests that failed, if any."""
    for request in requests:
        if request.error is not None:
            raise request.error
