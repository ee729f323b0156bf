"""`gptlab serve RUN_DIR [RUN_DIR ...]`: an OpenAI-compatible API and a web chat page.

Each run is served under the name of its directory (or NAME=RUN_DIR). Binds 127.0.0.1 unless
--host says otherwise; --api-key (or the GPTLAB_API_KEY environment variable) protects /v1.
docs/serving.md has the API, with curl and openai-client examples.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab.cli.common import UsageError, parse
from gptlab.errors import GptlabError
from gptlab.infer.chat import TemplateName, chat_format
from gptlab.infer.load import load_for_inference
from gptlab.runtime import pick_device

log = logging.getLogger("gptlab.serve")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeArgs:
    """Serve trained runs over HTTP (OpenAI-compatible) with a web chat page at /."""

    run_dirs: Annotated[tuple[str, ...], tyro.conf.Positional]
    """Run directories (or checkpoint directories) to serve; NAME=DIR names a model."""
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 exposes the server to the network (set an API key)."""
    port: int = 8000
    checkpoint: Literal["best", "latest"] = "best"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    template: TemplateName = "auto"
    """Chat format for /v1/chat/completions: auto = the template a chat-tuned run recorded,
    else a User:/Assistant: transcript (a base model); or transcript, special_tokens, plain."""
    compile: bool = False
    """Run the model through torch.compile: a slower start (it compiles), faster tokens."""
    quantize: Literal["auto", "none", "int8"] = "auto"
    """Weight format for decoding. auto = int8 on a CPU with AVX-512 and AVX512-BF16 when
    --dtype is auto (there about 1.4x faster per token than fp32, val loss equal within noise:
    docs/inference.md), else none; none = the checkpoint's weights as they are (exact fp32 on a
    CPU); int8 = weight-only int8 linears with per-channel scales, anywhere."""
    max_batch: int = 8
    """Cache rows per model: how many samples decode together; more requests wait."""
    max_tokens: int = 1024
    """Most new tokens a request may ask for (and the chat default)."""
    max_n: int = 8
    """Most choices (n) per prompt."""
    max_queue: int = 64
    """Most samples waiting for a cache row, per model; a request beyond that gets 429."""
    max_body_mb: float = 4.0
    """Largest request body in MiB; a larger one gets 413 before it is read or parsed."""
    threads: int | None = None
    """CPU threads for the model; default on a CPU: all cores but one, which is left to the
    HTTP server (its event loop otherwise fights the model's threads for the cores)."""
    api_key: str | None = None
    """Require 'Authorization: Bearer KEY' on /v1 (default: $GPTLAB_API_KEY, else none)."""


def _named(entries: tuple[str, ...]) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        path = Path(path if sep else entry)
        name = name if sep else path.resolve().name
        if name in named:
            raise UsageError(f"two runs are both named {name!r}; name them with NAME=DIR")
        named[name] = path
    return named


def _check_port(host: str, port: int) -> None:
    """Fail with one line now if the address cannot be bound (uvicorn would exit later)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r} is not an address this machine has ({e})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise GptlabError(
                f"cannot listen on {host}:{port} ({e.strerror}); is another server running "
                "there? pick another with --port"
            ) from None


def run(argv: list[str]) -> int:
    args = parse(ServeArgs, argv, prog="gptlab serve")
    try:
        import uvicorn

        from gptlab.serve.app import create_app
        from gptlab.serve.schemas import Limits
        from gptlab.serve.worker import ModelWorker
    except ImportError as e:
        raise GptlabError(
            f"gptlab serve needs FastAPI and uvicorn ({e.name} is missing); "
            "pip install 'gptlab[serve]'"
        ) from None
    if not args.run_dirs:
        raise UsageError("give at least one run directory to serve")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a TCP port (1..65535)")
    if args.max_batch < 1 or args.max_tokens < 1 or args.max_n < 1:
        raise UsageError("--max-batch, --max-tokens and --max-n must be >= 1")
    if args.max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {args.max_queue}")
    if not args.max_body_mb > 0:
        raise UsageError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    _check_port(args.host, args.port)
    max_n = min(args.max_n, args.max_batch)
    limits = Limits(max_tokens=args.max_tokens, max_n=max_n,
                    max_choices=max(Limits.max_choices, max_n),
                    max_body_bytes=int(args.max_body_mb * 2**20))  # fmt: skip
    device = pick_device(args.device)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.threads or device.type == "cpu":
        import torch

        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
    workers = {}
    for name, path in _named(args.run_dirs).items():
        loaded = load_for_inference(path, args.checkpoint, device, args.dtype, args.quantize)
        try:
            fmt = chat_format(loaded.tokenizer, loaded.config, args.template)
        except ValueError as e:  # e.g. special_tokens asked of a tokenizer without them
            raise UsageError(f"{name}: --template {args.template}: {e}") from None
        workers[name] = ModelWorker(name, loaded, fmt, args.max_batch, compile=args.compile,
                                    max_queue=args.max_queue)  # fmt: skip
    api_key = args.api_key or os.environ.get("GPTLAB_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("warning: serving on %s without an API key: anyone who can reach it can "
                    "use it (set --api-key)", args.host)  # fmt: skip
    app = create_app(workers, api_key=api_key, limits=limits)
    models = ", ".join(f"{n} ({w.loaded.describe()})" for n, w in workers.items())
    print(f"serving {models} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
