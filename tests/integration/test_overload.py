"""Overload: a full queue refuses at once (429 with Retry-After) and recovers, a client that
leaves frees its place and stops its answer, bodies past the limit get 413 in each route
family's shape, and a caller past its rate limit gets 429.

The queue tests serve an engine whose answers wait for a gate the test opens, on a real
loopback server (a disconnect is only real over a socket), so "busy" lasts exactly as long as
the test needs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.api.overload import Admission, RateLimit
from selftune.engines.base import AdapterRef, Chunk, GenerationParams, Prompt
from selftune.engines.transformers_engine import TransformersEngine
from tests.integration.conftest import serve_on_loopback, tiny_settings


def _chat(max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "model": "selftune",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


class HeldEngine:
    """The tiny model's tokenizer and template, with answers that wait for :attr:`gate`: one
    at a time (as the real engines answer), a token every 10 ms once the gate is open, each
    counted in :attr:`tokens`."""

    def __init__(self, inner: TransformersEngine) -> None:
        self.inner = inner
        self.name, self.context_length = inner.name, inner.context_length
        self.gate = threading.Event()
        self.tokens = 0
        self._one_at_a_time = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(
        self, prompt: Prompt, params: GenerationParams, adapter: AdapterRef | None
    ) -> Iterator[Chunk]:
        with self._one_at_a_time:
            assert self.gate.wait(30), "the test never opened the gate"
            for n in range(1, params.max_tokens + 1):
                time.sleep(0.01)
                self.tokens += 1
                yield Chunk("a ", None, n)
            yield Chunk("", "length", params.max_tokens)


@contextlib.contextmanager
def held_server(tiny_model_dir: Path, engine: HeldEngine, **serve: Any) -> Iterator[str]:
    app = create_app(tiny_settings(tiny_model_dir, serve=serve), engine=engine)  # type: ignore[arg-type]
    with serve_on_loopback(app) as url:
        try:
            yield url
        finally:
            engine.gate.set()  # answers still waiting end, so the server can stop


def _inside(url: str) -> int:
    """Requests answered or waiting, as /metrics reports them."""
    text = httpx.get(f"{url}/metrics").text
    values = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line[:1] != "#"
    }
    return int(values["llamacpp:requests_processing"] + values["llamacpp:requests_deferred"])


def _until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def _in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def held(tiny_engine: TransformersEngine) -> HeldEngine:
    return HeldEngine(tiny_engine)


def test_a_full_queue_refuses_at_once_then_recovers(
    settings_env: Path, tiny_model_dir: Path, held: HeldEngine
) -> None:
    with held_server(tiny_model_dir, held, max_queued_requests=1) as url:
        chat = f"{url}/v1/chat/completions"
        waiting = [_in_background(lambda: httpx.post(chat, json=_chat(), timeout=30))]
        waiting.append(_in_background(lambda: httpx.post(chat, json=_chat(), timeout=30)))
        _until(lambda: _inside(url) == 2, "one request answered and one waiting")

        started = time.perf_counter()
        refused = httpx.post(chat, json=_chat(), timeout=30)
        assert time.perf_counter() - started < 1  # at once, not after the queue
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "server_busy"
        assert "serve.max_queued_requests" in error["message"]
        # ollama's routes share the queue and answer in ollama's shape.
        ollama_chat = {**_chat(), "stream": False, "options": {"num_predict": 3}}
        del ollama_chat["max_tokens"]
        ollama = httpx.post(f"{url}/api/chat", json=ollama_chat, timeout=30)
        assert ollama.status_code == 429
        assert int(ollama.headers["Retry-After"]) >= 1
        assert set(ollama.json()) == {"error"}

        held.gate.set()
        for thread, result in waiting:
            thread.join(30)
            assert result[0].status_code == 200
        assert httpx.post(chat, json=_chat(), timeout=30).status_code == 200
        assert _inside(url) == 0


def test_a_client_that_leaves_frees_its_place_and_stops_its_answer(
    settings_env: Path, tiny_model_dir: Path, held: HeldEngine
) -> None:
    with held_server(tiny_model_dir, held, max_queued_requests=1) as url:
        chat = f"{url}/v1/chat/completions"
        with httpx.Client(timeout=30) as streaming:
            request = streaming.build_request("POST", chat, json=_chat(100, stream=True))
            first = streaming.send(request, stream=True)
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)  # the role's event; the answer holds the engine now
            _until(lambda: _inside(url) == 1, "the streamed answer waits for the engine")
            # A whole answer waits behind it; its client gives up.
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(chat, json=_chat(100), timeout=0.5)
            _until(lambda: _inside(url) == 1, "the waiting request that left gave back its place")
            third, result = _in_background(lambda: httpx.post(chat, json=_chat(), timeout=30))
            _until(lambda: _inside(url) == 2, "a new request took the place")
            first.close()  # the streamed answer's client leaves too
        _until(lambda: _inside(url) == 1, "the streamed answer that lost its client ended")
        held.gate.set()
        third.join(30)
        assert result[0].status_code == 200
        # The two answers that lost their clients stopped after at most a token each.
        assert held.tokens <= 3 + 2


def test_a_streamed_answer_stops_when_its_client_leaves(
    settings_env: Path, tiny_model_dir: Path, held: HeldEngine
) -> None:
    held.gate.set()
    with held_server(tiny_model_dir, held) as url, httpx.Client(timeout=30) as client:
        body = _chat(200, stream=True)
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
        _until(lambda: _inside(url) == 0, "the answer ended")
        stopped_at = held.tokens
        time.sleep(0.3)
        assert held.tokens == stopped_at < 50  # 200 asked for, 2 s of tokens


def test_bodies_past_the_limit_get_413_in_each_route_family_s_shape(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    app = create_app(tiny_settings(tiny_model_dir, serve={"max_request_bytes": 2048}), tiny_engine)
    big = _chat(messages=[{"role": "user", "content": "x" * 4096}])
    with serve_on_loopback(app) as url:
        openai = httpx.post(f"{url}/v1/chat/completions", json=big)
        assert openai.status_code == 413
        error = openai.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
        assert "serve.max_request_bytes" in error["message"]
        ollama = httpx.post(f"{url}/api/chat", json={**big, "stream": False})
        assert ollama.status_code == 413
        assert set(ollama.json()) == {"error"}

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
            yield b'{"model": "selftune", "messages": [{"role": "user", "content": "'
            for _ in range(8):
                yield b"x" * 512
            yield b'"}]}'

        headers = {"Content-Type": "application/json"}
        chunked = httpx.post(f"{url}/v1/chat/completions", content=chunks(), headers=headers)
        assert chunked.status_code == 413
        assert chunked.json()["error"]["code"] == "request_too_large"
        assert httpx.post(f"{url}/v1/chat/completions", json=_chat()).status_code == 200


def test_a_caller_past_its_rate_limit_gets_429(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    app = create_app(tiny_settings(tiny_model_dir, serve={"rate_limit_per_minute": 3}), tiny_engine)
    key = create_key(app.state.selftune.db, "alice")
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/v1/models").status_code == 200
        refused = client.get("/v1/models")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "20"  # a call every 60/3 s
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        ollama = client.get("/api/tags")
        assert (ollama.status_code, set(ollama.json())) == (429, {"error"})
        # A valid key is counted on its own, not with its address; a placeholder key is not.
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).is_success
        placeholder = {"Authorization": "Bearer sk-no-key-required"}
        assert client.get("/v1/models", headers=placeholder).status_code == 429
        assert client.get("/health").status_code == 200  # not an API call: never limited


def test_retry_after_follows_how_long_answers_hold_the_engine() -> None:
    now = [0.0]
    admission = Admission(queued=1, clock=lambda: now[0])
    first, second = admission.enter(), admission.enter()
    with pytest.raises(Exception, match="retry in 1 s") as refused:
        admission.enter()  # no answer yet to estimate from: 1 s
    assert refused.value.headers == {"Retry-After": "1"}  # type: ignore[attr-defined]
    now[0] = 3.0
    admission.leave(first, served=True)  # held the engine 3 s
    now[0] = 5.5
    third = admission.enter()
    admission.leave(second, served=True)  # waited, then held it 2.5 s
    admission.enter()
    with pytest.raises(Exception, match="retry in 3 s"):  # the mean, 2.75 s, rounded up
        admission.enter()
    admission.leave(third, served=False)  # left while it waited: tells nothing
    assert admission.inside == 1


def test_the_rate_limit_refills_one_call_at_a_time() -> None:
    now = [0.0]
    limit = RateLimit(per_minute=2, clock=lambda: now[0])
    limit.check("a")
    limit.check("a")
    with pytest.raises(Exception, match="retry in 30 s"):
        limit.check("a")
    limit.check("b")  # another caller has its own
    now[0] = 30.0
    limit.check("a")
    with pytest.raises(Exception, match="retry in 30 s"):
        limit.check("a")
