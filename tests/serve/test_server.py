"""The OpenAI-compatible server over real HTTP: uvicorn on 127.0.0.1, httpx and the official
openai client, streaming and not, bad requests, concurrency, disconnects and the API key."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from tests.serve.conftest import Server, make_app, slow_down, tiny_loaded

from gptlab.cli.main import main
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.infer.load import prompt_ids

openai = pytest.importorskip("openai")


def _sse(text: str) -> list:
    """The data payloads of a server-sent-event body."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_models_and_page(server):
    assert httpx.get(f"{server.url}/health").json() == {
        "status": "ok",
        "models": ["tiny-a", "tiny-b"],
        "failed": {},
    }
    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-a", "tiny-b"]
    assert models["data"][0]["context_length"] == 64
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="messages"' in page.text
    for name, kind, marker in (
        ("chat.css", "text/css", "#messages"),
        ("chat.js", "text/javascript", "loadModels"),
    ):
        assert f"/static/{name}" in page.text  # the page links its own styles and script
        asset = httpx.get(f"{server.url}/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert marker in asset.text
    for name in ("index.html", "..%2Fapp.py", "nope.js", "%2E%2E%2F%2E%2E%2Fpyproject.toml"):
        refused = httpx.get(f"{server.url}/static/{name}")  # only the listed files, nothing else
        assert refused.status_code == 404
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # still serving


def test_openai_client_completions(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    out = client.completions.create(
        model="tiny-a", prompt="Hello", max_tokens=10, temperature=0, n=2
    )
    assert len(out.choices) == 2 and out.choices[0].finish_reason == "length"
    assert out.choices[0].text == out.choices[1].text  # greedy: both samples agree
    assert out.usage.prompt_tokens == 5 and out.usage.completion_tokens == 20
    # the same request streamed gives the same text, piece by piece
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model="tiny-a", prompt="Hello", max_tokens=10, temperature=0, stream=True
        )
    ]
    assert len(pieces) >= 5 and "".join(pieces) == out.choices[0].text


def test_openai_client_chat(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = client.chat.completions.create(
        model="tiny-b", messages=messages, max_tokens=12, seed=3, temperature=1.0
    )
    reply = out.choices[0].message
    assert reply.role == "assistant" and out.choices[0].finish_reason in ("stop", "length")
    again = client.chat.completions.create(
        model="tiny-b", messages=messages, max_tokens=12, seed=3, temperature=1.0
    )
    assert again.choices[0].message.content == reply.content  # a seed reproduces
    chunks = list(
        client.chat.completions.create(
            model="tiny-b", messages=messages, max_tokens=12, seed=3, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.content
    assert chunks[-1].usage.completion_tokens >= 1


def test_bad_requests_get_a_clear_4xx(server):
    url = f"{server.url}/v1/completions"
    cases = [
        ({"model": "tiny-a", "prompt": "a", "temperature": 3}, 400, "temperature"),
        ({"model": "tiny-a", "prompt": "a", "max_tokens": 1000}, 400, "max_tokens"),
        ({"model": "tiny-a", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny-a", "prompt": "a", "top_p": 0}, 400, "top_p"),  # SamplingParams' check
        ({"model": "tiny-a", "prompt": "a", "top_k": -1}, 400, "top_k"),
        ({"model": "tiny-a", "prompt": "a", "stop": ["a", ""]}, 400, "stop"),
        ({"model": "tiny-a", "prompt": "\u2603"}, 400, "prompt"),  # not in the char vocab
        ({"model": "tiny-a", "prompt": "a", "n": 9}, 400, "n"),
        ({"model": "tiny-a", "prompt": "a", "logprobs": 2}, 400, "logprobs"),
        ({"model": "tiny-a", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "nope", "prompt": "a"}, 404, "model"),
        ({"prompt": "a"}, 400, "model"),
    ]
    for body, status, param in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"], (body, err)
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "tiny-a", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "dropped"),
    [
        ("ab", 20, 0),  # 22 tokens: fits the context of 64
        ("a" * 40, 40, 32),  # 80 in all: one slide keeps 32 tokens, dropping 32 of the prompt
        ("a" * 80, 40, 80),  # cropped by 16 to the context, then slid past the rest
    ],
    ids=["fits", "slides", "cropped"],
)
def test_past_the_context_the_window_slides_as_in_sample(server, prompt, max_tokens, dropped):
    """prompt + max_tokens over the context is served as `gptlab sample` serves it (the engine
    with overflow="shift"): the same greedy text, and usage says how much prompt was lost."""
    body = {"model": "tiny-a", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] == len(prompt)
    assert out["usage"]["completion_tokens"] == max_tokens
    assert out["usage"]["prompt_tokens_dropped"] == dropped
    loaded = tiny_loaded(0)  # tiny-a's weights
    ids = prompt_ids(loaded.tokenizer, prompt)
    greedy = SamplingParams(temperature=0, max_new_tokens=max_tokens)
    [alone] = Engine(loaded.model, loaded.tokenizer).generate([ids], greedy)
    assert out["choices"][0]["text"] == alone.sequences[0].text


def test_chat_past_the_context_is_served(server):
    """A conversation longer than the context, with no max_tokens: cropped, and the reply gets
    half a context (what a slide frees) up to the server's limit."""
    messages = [{"role": "user", "content": "Tell me a story about the sea, please."}] * 3
    r = httpx.post(f"{server.url}/v1/chat/completions",
                   json={"model": "tiny-b", "messages": messages, "temperature": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert (
        usage["prompt_tokens"] > 64
        and usage["prompt_tokens_dropped"] >= usage["prompt_tokens"] - 64
    )
    assert 1 <= usage["completion_tokens"] <= 32


def test_empty_prompt_starts_from_a_newline(server):
    r = httpx.post(f"{server.url}/v1/completions",
                   json={"model": "tiny-a", "prompt": "", "max_tokens": 3})  # fmt: skip
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 1


def test_concurrent_streams_do_not_mix(server):
    """Eight clients at once (more than the 4 rows: some wait); each stream equals the same
    request made alone."""

    async def one(client: httpx.AsyncClient, seed: int) -> str:
        body = {"model": "tiny-a", "prompt": "ab", "max_tokens": 20, "seed": seed,
                "stream": True}  # fmt: skip
        r = await client.post(f"{server.url}/v1/completions", json=body, timeout=60)
        events = _sse(r.text)
        assert events[-1] == "[DONE]"
        return "".join(e["choices"][0]["text"] for e in events[:-1])

    async def many() -> list[str]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(one(client, s) for s in range(8)))

    together = asyncio.run(many())
    alone = [
        httpx.post(f"{server.url}/v1/completions",
                   json={"model": "tiny-a", "prompt": "ab", "max_tokens": 20, "seed": s},
                   timeout=60).json()["choices"][0]["text"]
        for s in range(8)
    ]  # fmt: skip
    assert together == alone
    assert len(set(alone)) > 1  # different seeds really differ


def test_client_disconnect_frees_the_rows():
    """A client hangs up mid-stream: its request is cancelled (not run to the end), its rows
    are freed, and the server goes on serving."""
    app = make_app()
    worker = app.state.workers["tiny-b"]
    slow_down(worker, 0.02)  # 48 tokens now take about a second
    body = {"model": "tiny-b", "prompt": "a", "max_tokens": 48, "stream": True}
    with Server(app) as server:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # got the first piece; hang up mid-stream
        for _ in range(100):
            if not worker.engine.busy:
                break
            time.sleep(0.01)
        assert worker.cancelled == 1
        assert not worker.engine.busy and sorted(worker.engine.free_rows) == [0, 1, 2, 3]
        ok = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_api_key(keyed_server):
    url = f"{keyed_server.url}/v1/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer test-key"}).status_code == 200
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="test-key")
    assert client.completions.create(model="tiny-a", prompt="a", max_tokens=2).choices


def test_serve_cli_bad_input(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "x", "--port", "70000"]) == 2
    assert "not a TCP port" in capsys.readouterr().err
    assert main(["serve", "x", "--max-body-mb", "0"]) == 2
    assert "--max-body-mb must be > 0" in capsys.readouterr().err
    assert main(["serve", "x", "--max-queue", "-1"]) == 2
    assert "--max-queue must be >= 0" in capsys.readouterr().err
    with socket.socket() as busy:  # a port someone else holds
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
