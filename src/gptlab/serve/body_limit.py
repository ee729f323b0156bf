"""A cap on the size of a request body, enforced before anything reads or parses it.

FastAPI reads and parses the whole body before a route's dependencies run, the API-key check
included, so a limit checked in a route comes too late: a 40 MB body would already be in memory
and parsed, even from a client without the key. This ASGI middleware sits in front of the app.
A Content-Length over the cap is refused at once, without reading the body; a body without one
(chunked) is counted as it arrives and refused as soon as it passes the cap. An accepted body
is handed on unchanged, and after it the app reads the connection as usual (a streaming
response watches it for the client's disconnect).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from gptlab.serve.schemas import APIError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`."""

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body ended
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        mib = self.max_bytes / 2**20
        error = APIError(
            413, f"the request body is larger than this server's limit of {mib:g} MiB "
            "(gptlab serve --max-body-mb)", None, "request_too_large",
        )  # fmt: skip
        await JSONResponse(error.body(), status_code=413)(scope, receive, send)
