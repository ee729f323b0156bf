"""The HTTP app: OpenAI-compatible completions and chat completions, and a web chat page.

    GET  /                      the chat page (static/index.html)
    GET  /static/chat.css|js    its styles and script (a fixed list of files)
    GET  /health                {"status": "ok", "models": [...], "failed": {}}; 503 when a
                                model's worker thread has died ("failed" says why)
    GET  /v1/models             the models served, OpenAI's list format, each with its
                                context length and chat format (a chat-tuned run's template,
                                or "transcript" for a base model)
    POST /v1/completions        text in, text out; "stream": true sends server-sent events
    POST /v1/chat/completions   messages in, the assistant's reply out; streams the same way.
                                The reply ends at the chat format's end of turn, and no
                                special token ever appears in its text (infer/chat.py)

Requests are validated in schemas.py, after body_limit.py has capped the body's size; each
model runs in its worker (worker.py), which bounds its queue (429) and reports its own death
(503). With an API key set, the /v1 routes need `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from gptlab.infer.engine import Event
from gptlab.serve.body_limit import BodyLimit
from gptlab.serve.schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Limits,
    Plan,
    plan_chat,
    plan_completion,
)
from gptlab.serve.worker import DONE, Handle, ModelWorker, QueueFull, WorkerDied

ASSETS = {"chat.css": "text/css", "chat.js": "text/javascript"}  # the page's files, by name


def _static_text(name: str) -> str:
    return resources.files("gptlab.serve").joinpath("static", name).read_text("utf-8")


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Job:
    """One HTTP request's engine requests (one per prompt) and how to label their choices."""

    def __init__(self, worker: ModelWorker, plan: Plan, chat: bool) -> None:
        self.worker, self.plan, self.chat = worker, plan, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.handles: list[Handle] = []
        self.prompt_tokens = sum(len(p) for p in plan.prompts)
        self.completion_tokens = 0

    def start(self) -> None:
        try:
            self.handles = self.worker.submit(self.plan.prompts, self.plan.params, self.plan.n)
        except QueueFull as e:
            raise APIError(429, str(e), None, "queue_full") from None
        except WorkerDied as e:
            raise APIError(503, str(e), None, "model_unavailable") from None

    def cancel(self) -> None:
        for h in self.handles:
            self.worker.cancel(h)

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(choice index, event) pairs from all prompts, as they arrive."""
        for p, handle in enumerate(self.handles):
            while True:
                item = await handle.events.get()
                if item is DONE:
                    break
                if isinstance(item, WorkerDied):
                    raise APIError(503, str(item), None, "model_unavailable")
                if isinstance(item, ValueError):
                    raise APIError(400, str(item))
                if isinstance(item, Exception):
                    raise APIError(500, str(item))
                if item.token is not None:
                    self.completion_tokens += 1
                yield p * self.plan.n + item.index, item

    def chunk(self, index: int, text: str | None, finish: str | None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text or "", "logprobs": None,
                      "finish_reason": finish}  # fmt: skip
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created,
                "model": self.worker.name, "choices": [choice]}  # fmt: skip

    def usage(self) -> dict[str, int]:
        """OpenAI's usage, plus how many prompt tokens the model no longer saw: cut because
        the prompt exceeded the context, or slid out of the window as the reply grew."""
        dropped = sum(h.request.prompt_tokens_dropped for h in self.handles if h.request)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_dropped": dropped}  # fmt: skip


def create_app(
    workers: dict[str, ModelWorker], *, api_key: str | None = None, limits: Limits | None = None
) -> FastAPI:
    """The FastAPI app serving these workers (started and stopped with the app)."""
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for w in workers.values():
            w.start()
        yield
        for w in workers.values():
            w.stop()

    app = FastAPI(title="gptlab", lifespan=lifespan)
    app.state.workers = workers
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        if err.get("type") == "json_invalid":
            return JSONResponse(APIError(400, "the body is not valid JSON").body(), 400)
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {err.get('msg')}" if param else str(err.get("msg"))
        return JSONResponse(APIError(400, message, param).body(), status_code=400)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    def worker_for(name: str) -> ModelWorker:
        if name not in workers:
            raise APIError(
                404, f"model {name!r} does not exist; GET /v1/models lists: {', '.join(workers)}",
                "model", "model_not_found",
            )  # fmt: skip
        return workers[name]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _static_text("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:  # a fixed list: no path from the request reaches the disk
            raise APIError(404, f"no static file {name!r}", "name", "not_found")
        return Response(_static_text(name), media_type=ASSETS[name])

    @app.get("/health")
    async def health() -> JSONResponse:
        failed = {name: w.failure for name, w in workers.items() if w.failure is not None}
        body = {"status": "failing" if failed else "ok", "models": list(workers), "failed": failed}
        return JSONResponse(body, status_code=503 if failed else 200)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "gptlab",
                 "context_length": w.context, "chat_format": w.fmt.name}
                for name, w in workers.items()]  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(req: CompletionRequest):
        w = worker_for(req.model)
        plan = plan_completion(req, w.tokenizer, w.context, limits)
        return await _respond(Job(w, plan, chat=False), req.stream, req.stream_options)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(req: ChatCompletionRequest):
        w = worker_for(req.model)
        plan = plan_chat(req, w.fmt, w.context, limits)
        return await _respond(Job(w, plan, chat=True), req.stream, req.stream_options)

    return app


async def _respond(job: Job, stream: bool, options) -> dict | StreamingResponse:
    job.start()
    if stream:
        return StreamingResponse(
            _stream(job, bool(options and options.include_usage)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    try:
        async for index, event in job.events():
            texts.setdefault(index, []).append(event.text)
            if event.finish_reason:
                finish[index] = event.finish_reason
    finally:
        job.cancel()  # no-op once finished; frees the rows if the client went away
    choices = []
    for index in sorted(texts):
        text = "".join(texts[index])
        if job.chat:
            message = {"role": "assistant", "content": text.lstrip()}
            choices.append({"index": index, "message": message, "logprobs": None,
                            "finish_reason": finish.get(index)})  # fmt: skip
        else:
            choices.append({"index": index, "text": text, "logprobs": None,
                            "finish_reason": finish.get(index)})  # fmt: skip
    return {"id": job.id, "object": "chat.completion" if job.chat else "text_completion",
            "created": job.created, "model": job.worker.name, "choices": choices,
            "usage": job.usage()}  # fmt: skip


async def _stream(job: Job, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of text, then [DONE]. If the client goes away,
    Starlette cancels this generator and `finally` cancels the engine requests."""
    started: set[int] = set()  # chat choices that have sent their role / first text
    try:
        async for index, event in job.events():
            text = event.text
            if job.chat and index not in started:
                text = text.lstrip()  # a transcript reply starts after "Assistant:"
                if not text and not event.finish_reason:
                    continue
                started.add(index)
                yield _sse(job.chunk(index, None, None, role=True))
            if text or event.finish_reason:
                yield _sse(job.chunk(index, text, event.finish_reason))
        if include_usage:
            yield _sse({"id": job.id, "object": job.chunk(0, None, None)["object"],
                        "created": job.created, "model": job.worker.name, "choices": [],
                        "usage": job.usage()})  # fmt: skip
    except APIError as e:
        yield _sse(e.body())
    finally:
        job.cancel()
    yield _sse("[DONE]")
