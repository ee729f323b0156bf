"""Bad input and failures (issue 15): each gets one clear error, and the server serves the
next normal request. Bad seeds, a 40 MB body, 20,000 prompts, 10,000 messages, 5,000 stop
strings, a full queue, a failure inside the engine and a worker thread that dies."""

from __future__ import annotations

import threading

import httpx
import pytest
from tests.serve.conftest import API_KEY, Server, make_app

NORMAL = {"model": "tiny-a", "prompt": "ab", "max_tokens": 5, "temperature": 0}


def served(url: str, model: str = "tiny-a") -> dict:
    """A normal request still gets its answer."""
    r = httpx.post(f"{url}/v1/completions", json={**NORMAL, "model": model}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 5
    return out


def refused(r: httpx.Response, status: int, param: str | None = None) -> str:
    """One error in OpenAI's shape, with this status (and field); returns the message."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err
    return err["message"]


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70, 1.5, "7", True])
def test_bad_seed(server, seed):
    """A negative seed used to take cache rows and never return them: a 500, then every later
    request failed. Now every bad seed is a 400 from SamplingParams or the schema."""
    for route, body in [
        ("completions", {**NORMAL, "seed": seed}),
        ("chat/completions", {"model": "tiny-a", "seed": seed,
                              "messages": [{"role": "user", "content": "hi"}]}),
    ]:  # fmt: skip
        message = refused(httpx.post(f"{server.url}/v1/{route}", json=body), 400, "seed")
        assert "seed" in message
    served(server.url)


def test_largest_seed_is_accepted(server):
    body = {**NORMAL, "seed": 2**63 - 1, "temperature": 1.0}
    first = httpx.post(f"{server.url}/v1/completions", json=body).json()
    again = httpx.post(f"{server.url}/v1/completions", json=body).json()
    assert first["choices"][0]["text"] == again["choices"][0]["text"]


@pytest.mark.parametrize("keyed", [False, True])
def test_40_mb_body(server, keyed_server, keyed):
    """413 before the body is parsed, and before the API key is even looked at."""
    url = (keyed_server if keyed else server).url
    body = b'{"model": "tiny-a", "prompt": "' + b"a" * (40 * 2**20) + b'"}'
    r = httpx.post(f"{url}/v1/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert "MiB" in refused(r, 413)
    if keyed:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        ok = httpx.post(f"{url}/v1/completions", json=NORMAL, headers=headers, timeout=30)
        assert ok.status_code == 200, ok.text
    else:
        served(url)


def test_chunked_body_is_counted():
    """Without a Content-Length the bytes are counted as they arrive."""
    with Server(make_app(max_body_bytes=1000)) as server:

        def chunks():
            yield b'{"model": "tiny-a", "prompt": "'
            for _ in range(20):
                yield b"a" * 100
            yield b'"}'

        r = httpx.post(f"{server.url}/v1/completions", content=chunks(),
                       headers={"content-type": "application/json"})  # fmt: skip
        refused(r, 413)
        served(server.url)  # a small body passes, whole


def test_20000_prompts(server):
    r = httpx.post(f"{server.url}/v1/completions", json={**NORMAL, "prompt": ["a"] * 20_000})
    assert "20000 prompts" in refused(r, 400, "prompt")
    r = httpx.post(f"{server.url}/v1/completions", json={**NORMAL, "prompt": ["a"] * 9, "n": 4})
    refused(r, 400, "prompt")  # 36 choices: over the 32 allowed
    served(server.url)


def test_10000_messages(server):
    messages = [{"role": "user", "content": "hi"}] * 10_000
    r = httpx.post(f"{server.url}/v1/chat/completions",
                   json={"model": "tiny-a", "messages": messages})  # fmt: skip
    assert "10000 messages" in refused(r, 400, "messages")
    served(server.url)


def test_5000_stop_strings(server):
    r = httpx.post(f"{server.url}/v1/completions", json={**NORMAL, "stop": ["x"] * 5_000})
    assert "up to 4" in refused(r, 400, "stop")
    served(server.url)


def test_full_queue():
    """One row and room for one waiting sample: a third request gets 429, and once the two
    are done the next one is served. The decode steps wait on a gate, so the first request
    cannot finish while the queue is being filled."""
    app = make_app(max_batch=1, max_queue=1)
    engine = app.state.workers["tiny-a"].engine
    gate, decode = threading.Event(), engine.decode_forward

    def gated(idx, step):
        gate.wait(timeout=30)
        return decode(idx, step)

    engine.decode_forward = gated
    long = {**NORMAL, "max_tokens": 20, "stream": True}
    with Server(app) as server:
        url = f"{server.url}/v1/completions"
        # a streaming response starts once its handler has submitted the request
        with (
            httpx.stream("POST", url, json=long, timeout=30) as running,
            httpx.stream("POST", url, json=long, timeout=30) as waiting,
        ):
            assert running.status_code == waiting.status_code == 200
            r = httpx.post(url, json=NORMAL, timeout=30)
            assert "busy" in refused(r, 429)
            assert r.json()["error"]["type"] == "rate_limit_error"
            served(server.url, "tiny-b")  # another model has its own queue
            gate.set()
            for stream in (running, waiting):
                assert [line for line in stream.iter_lines() if line][-1] == "data: [DONE]"
        served(server.url)


def test_failure_in_prefill_fails_only_that_request(monkeypatch):
    """An exception inside the engine (here, the prompt's forward pass) is a 500 for that
    request alone: its rows come back and the next request is served."""
    app = make_app()
    worker = app.state.workers["tiny-a"]
    model = worker.engine.model
    forward = model.forward_cached
    calls = []

    def failing_once(idx, step):
        calls.append(idx.size(1))
        if len(calls) == 1:
            raise RuntimeError("injected prefill failure")
        return forward(idx, step)

    monkeypatch.setattr(model, "forward_cached", failing_once)
    with Server(app) as server:
        r = httpx.post(f"{server.url}/v1/completions", json={**NORMAL, "n": 3}, timeout=30)
        assert "injected prefill failure" in refused(r, 500)
        assert sorted(worker.engine.free_rows) == [0, 1, 2, 3]
        served(server.url)
        assert httpx.get(f"{server.url}/health").status_code == 200


def test_dead_worker_reports_and_fails_fast(monkeypatch):
    """A worker thread that dies: the request it was serving and every later one get 503 (not
    a hang), /health says which model and why, and the other model goes on serving."""
    app = make_app()
    worker = app.state.workers["tiny-a"]

    def broken_step():
        raise RuntimeError("injected engine bug")

    monkeypatch.setattr(worker.engine, "step", broken_step)
    with Server(app) as server:
        r = httpx.post(f"{server.url}/v1/completions", json=NORMAL, timeout=30)
        assert "injected engine bug" in refused(r, 503)
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failing"
        assert "injected engine bug" in health.json()["failed"]["tiny-a"]
        assert list(health.json()["failed"]) == ["tiny-a"]
        for body in (NORMAL, {**NORMAL, "stream": True}):
            r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
            assert "unavailable" in refused(r, 503)
        served(server.url, "tiny-b")
