"""A real uvicorn server on 127.0.0.1 serving tiny models, for the HTTP and browser tests."""

from __future__ import annotations

import socket
import string
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from gptlab.infer.chat import chat_format  # noqa: E402
from gptlab.infer.load import Loaded  # noqa: E402
from gptlab.model.config import ModelConfig  # noqa: E402
from gptlab.model.gpt import GPT  # noqa: E402
from gptlab.serve.app import create_app  # noqa: E402
from gptlab.serve.schemas import Limits  # noqa: E402
from gptlab.serve.worker import ModelWorker  # noqa: E402
from gptlab.tokenizer.char import CharTokenizer  # noqa: E402

CHARS = sorted(set(string.ascii_letters + string.digits + " \n.,:;!?'-"))
API_KEY = "test-key"


def tiny_loaded(seed: int, seq_len: int = 64) -> Loaded:
    torch.manual_seed(seed)
    tok = CharTokenizer(CHARS)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=seq_len, vocab_size=tok.vocab_size)
    return Loaded(GPT(cfg).eval(), tok, {}, Path("."))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread; `url` is its base address."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_app(
    api_key: str | None = None,
    max_batch: int = 4,
    seq_len: int = 64,
    max_tokens: int = 48,
    max_queue: int = 64,
    **limits,
):
    """Two tiny models, tiny-a and tiny-b; `limits` are further Limits fields."""
    workers = {}
    for name, seed in (("tiny-a", 0), ("tiny-b", 1)):
        loaded = tiny_loaded(seed, seq_len)
        fmt = chat_format(loaded.tokenizer, loaded.config)
        workers[name] = ModelWorker(name, loaded, fmt, max_batch=max_batch, max_queue=max_queue)
    limits = Limits(max_tokens=max_tokens, max_n=4, **limits)
    return create_app(workers, api_key=api_key, limits=limits)


def slow_down(worker: ModelWorker, seconds: float) -> None:
    """Make every decode step of this worker's engine take `seconds` longer, so a stream lasts
    long enough to watch or interrupt."""
    decode = worker.engine.decode_forward

    def slow(idx, step):
        time.sleep(seconds)
        return decode(idx, step)

    worker.engine.decode_forward = slow


@pytest.fixture(scope="module")
def server():
    with Server(make_app()) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server():
    with Server(make_app(api_key=API_KEY)) as s:
        yield s
