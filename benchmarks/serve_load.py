"""Benchmark: the server's time to first token and its throughput with concurrent streaming
clients, on the `shakespeare_char` model shape.

A real uvicorn server runs on 127.0.0.1 in this process (its own thread); clients are httpx
async streams in the main thread, so the numbers include HTTP, JSON and server-sent events.
The model is the shakespeare_char shape (6 layers, 384 wide, context 256) with random weights,
or a trained run given with --run. Each client asks /v1/completions for --new-tokens tokens
(min_p/top-k off, temperature 0.8, its own seed) with "stream": true. Like `gptlab serve`,
the model gets all CPU cores but one (--threads), leaving one to the HTTP side.

    python benchmarks/serve_load.py [--clients 8] [--new-tokens 200] [--threads 1] [--compile]

Output: one JSON line per scenario (1 client, then N concurrent clients): time to first token
(median and worst), tokens/s summed over clients, and a summary line with the throughput ratio
N clients / 1 client (continuous batching decodes the clients together). Markdown on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import statistics
import string
import sys
import threading
import time
from pathlib import Path

import torch

from gptlab.infer.chat import chat_format
from gptlab.infer.engine import cast_for_inference
from gptlab.infer.load import Loaded, load_for_inference
from gptlab.model.gpt import GPT
from gptlab.presets import shakespeare_char
from gptlab.tokenizer.char import CharTokenizer

try:
    import httpx
    import uvicorn

    from gptlab.serve.app import create_app
    from gptlab.serve.worker import ModelWorker
except ImportError as e:
    raise SystemExit(f"needs the serve extra and httpx ({e.name} missing): "
                     "pip install -e '.[serve,test]'") from None  # fmt: skip


def random_model() -> Loaded:
    torch.manual_seed(0)
    tok = CharTokenizer(sorted(set(string.printable)))
    cfg = dataclasses.replace(shakespeare_char().model, vocab_size=tok.vocab_size, dropout=0.0)
    return Loaded(cast_for_inference(GPT(cfg), torch.float32), tok, {}, Path("."))


class Server:
    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()


async def one_client(client: httpx.AsyncClient, url: str, seed: int, new_tokens: int) -> dict:
    body = {"model": "bench", "prompt": "ROMEO:", "max_tokens": new_tokens, "seed": seed,
            "temperature": 0.8, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    first, pieces = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:])["choices"][0]["text"]:
                pieces += 1
                first = first or time.perf_counter() - t0
    return {"ttft_s": first, "seconds": time.perf_counter() - t0, "pieces": pieces}


async def scenario(url: str, clients: int, new_tokens: int) -> dict:
    async with httpx.AsyncClient() as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(one_client(client, url, seed, new_tokens) for seed in range(clients))
        )
        wall = time.perf_counter() - t0
    ttfts = [r["ttft_s"] for r in results]
    tokens = clients * new_tokens
    return {
        "clients": clients,
        "new_tokens_each": new_tokens,
        "ttft_median_ms": round(1e3 * statistics.median(ttfts), 1),
        "ttft_max_ms": round(1e3 * max(ttfts), 1),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="torch threads; default as gptlab serve: all cores but one")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="as gptlab serve --compile")
    ap.add_argument("--run", type=Path, help="serve this trained run instead of random weights")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    loaded = (load_for_inference(a.run, "best", torch.device("cpu")) if a.run
              else random_model())  # fmt: skip
    worker = ModelWorker("bench", loaded, chat_format(loaded.tokenizer, loaded.config),
                         max_batch=max(8, a.clients), compile=a.compile)  # fmt: skip
    model = str(a.run or "shakespeare_char shape, random weights")
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "model": model, "compile": a.compile}))  # fmt: skip
    rows = []
    with Server(create_app({"bench": worker})) as server:
        asyncio.run(scenario(server.url, 1, 8))  # warm-up
        for clients in (1, a.clients):
            rows.append(asyncio.run(scenario(server.url, clients, a.new_tokens)))
            print(json.dumps(rows[-1]), flush=True)
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(json.dumps({"summary": {"throughput_ratio_n_clients_vs_1": round(ratio, 2),
                                  "ttft_1_client_ms": rows[0]["ttft_median_ms"]}}))  # fmt: skip
    lines = ["| clients | TTFT median ms | TTFT max ms | tokens/s (all clients) |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['clients']} | {r['ttft_median_ms']} | {r['ttft_max_ms']} | "
              f"{r['tokens_per_s']} |" for r in rows]  # fmt: skip
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
