"""The OpenAI-compatible routes on the tiny model: shapes, recording, and bad requests."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from selftune.store.schema import Interaction

CHAT = {"model": "selftune", "messages": [{"role": "user", "content": "Hello there"}]}


def _count_interactions(client: TestClient) -> int:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        return int(session.scalar(select(func.count(Interaction.id))) or 0)


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def test_chat_completion_is_recorded_under_its_id(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "user": "alice", "max_tokens": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 5
    assert body["system_fingerprint"] == "base"
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        row = session.get(Interaction, body["id"])
        assert row is not None
        assert row.user_id == "alice"
        assert row.version_id is None
        assert row.response == body["choices"][0]["message"]["content"]
        assert row.messages == [{"role": "user", "content": "Hello there"}]
        assert row.prompt_tokens == body["usage"]["prompt_tokens"]


def test_greedy_answers_are_deterministic(client: TestClient) -> None:
    first = client.post("/v1/chat/completions", json={**CHAT, "temperature": 0}).json()
    second = client.post("/v1/chat/completions", json={**CHAT, "temperature": 0}).json()
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["id"] != second["id"]


def test_streaming_chat_matches_the_recorded_answer(client: TestClient) -> None:
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-1]["usage"]["completion_tokens"] >= 1
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        assert session.get(Interaction, events[0]["id"]).response == text  # type: ignore[union-attr]


def test_completions_and_models(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"model": "selftune", "prompt": "Once upon"})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "text_completion"
    models = client.get("/v1/models").json()
    # The served name, then the bare base (no version has been trained here), then the
    # dedicated embedding model.
    assert [m["id"] for m in models["data"]] == ["selftune", "base", "all-MiniLM-L6-v2"]
    assert client.get("/health").json()["status"] == "ok"


def test_stop_sequence_ends_the_answer(client: TestClient) -> None:
    free = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 8}).json()
    text = free["choices"][0]["message"]["content"]
    assert len(text) > 2
    stop = text[1:3]
    cut = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 8, "stop": [stop]}).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_bad_requests_get_openai_errors_and_record_nothing(client: TestClient) -> None:
    before = _count_interactions(client)
    bad = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _error(bad, 400)
    _error(client.post("/v1/chat/completions", json={"model": "selftune", "messages": []}), 400)
    _error(
        client.post(
            "/v1/chat/completions",
            json={"model": "selftune", "messages": [{"role": "user", "content": 5}]},
        ),
        400,
    )
    _error(
        client.post(
            "/v1/chat/completions",
            json={"model": "selftune", "messages": [{"role": "robot", "content": "x"}]},
        ),
        400,
    )
    _error(
        client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"}), 404, "model_not_found"
    )
    long_prompt = {"model": "selftune", "messages": [{"role": "user", "content": "word " * 400}]}
    _error(client.post("/v1/chat/completions", json=long_prompt), 400, "context_length_exceeded")
    _error(
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10_000}),
        400,
        "context_length_exceeded",
    )
    _error(client.post("/v1/chat/completions", json={**CHAT, "n": 2}), 400)
    _error(client.post("/v1/completions", json={"model": "selftune"}), 400)
    assert _count_interactions(client) == before


def test_request_template_override(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "chat_template": "llama2"})
    assert response.status_code == 200, response.text
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        row = session.get(Interaction, response.json()["id"])
        assert row is not None and row.chat_template == "llama2"
    _error(client.post("/v1/chat/completions", json={**CHAT, "chat_template": "nonsense"}), 400)


def test_concurrent_requests_are_all_answered_and_recorded(client: TestClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    before = _count_interactions(client)

    def ask(i: int) -> int:
        body = {**CHAT, "user": f"u{i}", "max_tokens": 4, "stream": i % 2 == 0}
        return client.post("/v1/chat/completions", json=body).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(ask, range(12)))
    assert statuses == [200] * 12
    assert _count_interactions(client) == before + 12


def test_an_empty_prompt_is_answered_from_the_start_of_a_text(client: TestClient) -> None:
    """As llama.cpp's engine does (its server too): generation starts from the BOS token."""
    response = client.post(
        "/v1/completions", json={"model": "selftune", "prompt": "", "max_tokens": 3}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
