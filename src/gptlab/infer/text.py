"""Generated ids -> text pieces for streaming, with stop strings.

Two things make "decode each new token" wrong for streaming: a byte-level BPE token can end in
the middle of a UTF-8 character (it decodes to U+FFFD until the next token completes it), and a
stop string can span several tokens, so text that might be the start of one must not be sent
before we know. TextStream decodes the whole output each time, holds back a trailing U+FFFD and
any tail that could still begin a stop string, and sends the rest.
"""

from __future__ import annotations

from gptlab.tokenizer.base import Tokenizer

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


class TextStream:
    """Text of one generated sequence, released piece by piece."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""  # all text decoded so far
        self.sent = 0  # characters of it already released
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one generated id; return the text that is now safe to send (maybe '')."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        end = len(self.text.rstrip(REPLACEMENT))  # an unfinished character may still complete
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s) + 1))
            if at != -1 and at < end:
                end, self.stopped = at, True
        if self.stopped:
            self.text = self.text[:end]  # the stop string and anything after it are dropped
        else:
            end -= self._stop_prefix(self.text[:end])
        return self._release(max(end, self.sent))

    def finish(self) -> str:
        """The output is complete: release whatever was held back."""
        return self._release(len(self.text))

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _release(self, end: int) -> str:
        piece, self.sent = self.text[self.sent : end], end
        return piece
