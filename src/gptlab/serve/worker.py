"""One model behind the server: an engine stepped by its own thread.

HTTP handlers run on asyncio's event loop and must never block it for a model step, and the
engine is not thread-safe. So each model gets one worker thread that owns its Engine: handlers
post requests and cancellations into the worker's inbox, the thread admits them and steps the
engine (all running requests decode together: continuous batching), and hands each event back
to the waiting handler's asyncio queue through `call_soon_threadsafe`. A handler whose client
went away cancels its request, and the rows are freed at the next step.

Bounded and fail-fast (issue 15):
- The queue is bounded: `submit` counts the samples this worker holds (running or waiting)
  and refuses a request that would leave more than `max_queue` samples waiting for a row
  (QueueFull, HTTP 429), all of its prompts or none.
- A request that fails inside the engine fails alone (the engine frees its rows); its handler
  gets the error.
- An exception that escapes the engine's step means the engine itself is broken, and serving
  on from a broken engine is how one bad request used to break every later one. So the
  thread stops: `failure` says why (/health reports it), every waiting handler gets
  WorkerDied, and later submits raise it at once (HTTP 503) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from typing import Any

from gptlab.infer.chat import ChatFormat
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine, Event, Request
from gptlab.infer.load import Loaded

log = logging.getLogger(__name__)
DONE = object()  # end of a handle's events


class QueueFull(Exception):
    """More samples would wait for this model than its queue holds."""


class WorkerDied(Exception):
    """The model's worker thread has stopped; the model serves nothing until a restart."""


@dataclasses.dataclass(eq=False)
class Handle:
    """A handler's view of one engine request: its events arrive in `events`."""

    loop: asyncio.AbstractEventLoop
    samples: int  # n: what the request counts against the queue
    events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    request: Request | None = None

    def put(self, item: Any) -> None:
        """From the worker thread: deliver an event (or DONE, or an exception) to the loop."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class ModelWorker:
    """A named model, its engine and the thread that steps it."""

    def __init__(
        self,
        name: str,
        loaded: Loaded,
        fmt: ChatFormat,
        max_batch: int = 8,
        compile: bool = False,
        max_queue: int = 64,
    ) -> None:
        self.name, self.loaded, self.fmt = name, loaded, fmt
        self.tokenizer = loaded.tokenizer
        self.context = loaded.model.cfg.seq_len
        # past the context the window slides, as in `gptlab sample` (overflow="shift")
        self.engine = Engine(loaded.model, loaded.tokenizer, max_batch=max_batch, compile=compile)
        self.max_queue = max_queue
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.handles: dict[int, Handle] = {}  # engine request id -> handle
        self.cancelled = 0  # requests stopped before they finished (clients that went away)
        self.compiled = compile
        self.samples = 0  # samples submitted and not yet finished, failed or cancelled
        self.failure: str | None = None  # why the thread died, once it has
        # guards `samples` and `failure`, and orders a submit against the thread's death
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gptlab-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(None)
        self._thread.join(timeout=10)

    # -- called from the event loop ----------------------------------------------------------

    def submit(self, prompts: list[list[int]], params: SamplingParams, n: int) -> list[Handle]:
        """One handle per prompt, each for n samples; raises QueueFull or WorkerDied instead
        of queueing any of them."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.failure is not None:
                raise WorkerDied(f"model {self.name!r} is unavailable: {self.failure}")
            limit = self.engine.max_batch + self.max_queue
            if self.samples + len(prompts) * n > limit:
                raise QueueFull(
                    f"model {self.name!r} is busy: {self.samples} samples are running or "
                    f"waiting (at most {limit}); retry later"
                )
            self.samples += len(prompts) * n
            handles = [Handle(loop, n) for _ in prompts]
            for handle, prompt in zip(handles, prompts, strict=True):
                self.inbox.put(("submit", handle, prompt, params, n))
        return handles

    def cancel(self, handle: Handle) -> None:
        self.inbox.put(("cancel", handle))

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # whatever it was, the waiting handlers must hear of it
            log.exception("the worker of %s died", self.name)
            self._die(e)

    def _serve(self) -> None:
        if self.compiled:  # compile before the first request; requests wait in the inbox
            log.info("compiling %s ...", self.name)
            self.engine.warm_up()
        while not self._stop.is_set():
            try:
                # wait for work when idle; otherwise only take what is already there
                item = self.inbox.get(timeout=None if not self.engine.busy else 0)
            except queue.Empty:
                item = None
            while item is not None:
                self._handle(item)
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    item = None
            if self.engine.busy:
                self._step()

    def _handle(self, item: tuple) -> None:
        if item[0] == "cancel":
            handle = item[1]
            if handle.request is not None and self.handles.pop(handle.request.id, None):
                self.cancelled += 1
                self.engine.cancel(handle.request)
                self._settle(handle)
            return
        _, handle, prompt, params, n = item
        try:
            handle.request = self.engine.submit(prompt, params, n)
        except Exception as e:  # schemas.py checks first; this is a second line of defence
            self._settle(handle, e)  # a ValueError is the client's mistake (400), else a 500
            return
        self.handles[handle.request.id] = handle

    def _step(self) -> None:
        events: list[Event] = self.engine.step()  # an exception here ends the thread
        for event in events:
            handle = self.handles.get(event.request.id)
            if handle is not None:
                handle.put(event)
        for rid, handle in list(self.handles.items()):
            request = handle.request
            if request.done:
                del self.handles[rid]
                error = request.error
                self._settle(handle, RuntimeError(f"generation failed: {error}") if error else DONE)

    def _settle(self, handle: Handle, last: Any = None) -> None:
        """The handle's request is over: it no longer counts against the queue, and `last`
        (DONE or an exception; None for a cancelled one) is its final item."""
        with self._lock:
            self.samples -= handle.samples
        if last is not None:
            handle.put(last)

    def _die(self, error: BaseException) -> None:
        """Fail every handler still waiting, and make later submits fail at once."""
        with self._lock:
            self.failure = f"{type(error).__name__}: {error}"
            dead = WorkerDied(f"model {self.name!r} is unavailable: {self.failure}")
            waiting = list(self.handles.values())
            while True:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is not None and item[0] == "submit":
                    waiting.append(item[1])
        self.handles.clear()
        for handle in waiting:
            handle.put(dead)
