"""One model behind the server: an engine stepped by its own thread.

HTTP handlers run on asyncio's event loop and must never block it for a model step, and the
engine is not thread-safe. So each model gets one worker thread that owns its Engine: handlers
post requests and cancellations into the worker's inbox, the thread admits them and steps the
engine (all running requests decode together: continuous batching), and hands each event back
to the waiting handler's asyncio queue through `call_soon_threadsafe`. Requests beyond the
engine's rows wait in its queue. A handler whose client went away cancels its request, and the
rows are freed at the next step.
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


@dataclasses.dataclass(eq=False)
class Handle:
    """A handler's view of one engine request: its events arrive in `events`."""

    loop: asyncio.AbstractEventLoop
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
    ) -> None:
        self.name, self.loaded, self.fmt = name, loaded, fmt
        self.tokenizer = loaded.tokenizer
        self.context = loaded.model.cfg.seq_len
        # requests are checked against the context, so a full row ends the sample ("length")
        self.engine = Engine(loaded.model, loaded.tokenizer, max_batch=max_batch,
                             overflow="error", compile=compile)  # fmt: skip
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.handles: dict[int, Handle] = {}  # engine request id -> handle
        self.cancelled = 0  # requests stopped before they finished (clients that went away)
        self.compiled = compile
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gptlab-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(None)
        self._thread.join(timeout=10)

    # -- called from the event loop ----------------------------------------------------------

    def submit(self, prompt: list[int], params: SamplingParams, n: int) -> Handle:
        handle = Handle(asyncio.get_running_loop())
        self.inbox.put(("submit", handle, prompt, params, n))
        return handle

    def cancel(self, handle: Handle) -> None:
        self.inbox.put(("cancel", handle))

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
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
            if handle.request is not None and not handle.request.done:
                self.cancelled += 1
                self.engine.cancel(handle.request)
                self.handles.pop(handle.request.id, None)
            return
        _, handle, prompt, params, n = item
        try:
            handle.request = self.engine.submit(prompt, params, n)
        except ValueError as e:  # schemas.py checks first; this is a second line of defence
            handle.put(e)
            return
        self.handles[handle.request.id] = handle

    def _step(self) -> None:
        try:
            events: list[Event] = self.engine.step()
        except Exception as e:  # a bug must not kill the thread: fail what is running
            log.exception("engine step failed")
            for handle in self.handles.values():
                handle.put(RuntimeError(f"generation failed: {e}"))
                self.engine.cancel(handle.request)
            self.handles.clear()
            return
        for event in events:
            handle = self.handles.get(event.request.id)
            if handle is not None:
                handle.put(event)
        for rid, handle in list(self.handles.items()):
            if handle.request.done:
                handle.put(DONE)
                del self.handles[rid]
