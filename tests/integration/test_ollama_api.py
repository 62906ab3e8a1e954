"""The official ollama client against a real server: ollama's API on selftune's server.

The server (the ``openai_server`` fixture) serves the tiny model as a GGUF on the llama.cpp
engine, with no keys required; the client is ``ollama.Client(host=<server url>)``. Bodies the
client does not expose (the interaction id, the exact error body) are read with httpx, and
checked against the documented models (api/ollama_schemas.py, ``extra="forbid"``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from fastapi.testclient import TestClient

from selftune.api import ollama_schemas
from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.api.generation import Generation
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Interaction
from tests.integration.conftest import LiveServer, tiny_settings

QUESTION = [{"role": "user", "content": "Tell me about the sea."}]
# The tiny model's greedy answers are blank lines; a seeded sample tells prompts apart.
SAMPLED: dict[str, Any] = {"num_predict": 6, "temperature": 1.0, "seed": 11}


@pytest.fixture(scope="module")
def client(openai_server: LiveServer) -> ollama.Client:
    return ollama.Client(host=openai_server.url)


@pytest.fixture(scope="module")
def http(openai_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=openai_server.url, timeout=60) as session:
        yield session


def _recorded(server: LiveServer, interaction_id: str) -> Interaction:
    with server.app.state.selftune.db.read() as session:
        row = session.get(Interaction, interaction_id)
        assert row is not None
        session.expunge(row)
    return row


def _unit(vector: list[float]) -> bool:
    return math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)


def test_chat_answers_with_ollamas_counts(client: ollama.Client) -> None:
    answer = client.chat(model="selftune", messages=QUESTION, options=SAMPLED, stream=False)
    assert answer.message.role == "assistant" and isinstance(answer.message.content, str)
    assert answer.done and answer.done_reason == "length"
    assert answer.eval_count == 6 and answer.prompt_eval_count and answer.prompt_eval_count > 5
    assert answer.total_duration and answer.total_duration >= (answer.eval_duration or 0) > 0
    assert answer.load_duration == 0


def test_chat_streams_ndjson_and_is_recorded(
    client: ollama.Client, http: httpx.Client, openai_server: LiveServer
) -> None:
    parts = list(client.chat(model="selftune", messages=QUESTION, options=SAMPLED, stream=True))
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == 6 and parts[-1].done_reason == "length"
    streamed = "".join(part.message.content or "" for part in parts)

    body = {"model": "selftune:latest", "messages": QUESTION, "options": SAMPLED}
    with http.stream("POST", "/api/chat", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    for line in lines:
        ollama_schemas.OllamaChatChunk.model_validate(line)
    last = lines[-1]
    assert response.headers["x-selftune-interaction-id"] == last["interaction_id"]
    row = _recorded(openai_server, last["interaction_id"])
    assert row.kind == "chat" and row.messages == QUESTION
    assert row.response == "".join(line["message"]["content"] for line in lines)
    assert row.response == streamed  # the same seed, the same answer
    assert row.completion_tokens == 6 and row.model == "selftune"  # recorded without the tag
    assert last["model"] == "selftune:latest"  # answered as asked, as ollama does


def test_a_chat_through_ollama_takes_feedback(http: httpx.Client) -> None:
    body = {"model": "selftune", "messages": QUESTION, "options": SAMPLED, "stream": False}
    answer = http.post("/api/chat", json=body).json()
    ollama_schemas.OllamaChatChunk.model_validate(answer)
    feedback = {"interaction_id": answer["interaction_id"], "rating": 1}
    rated = http.post("/api/feedback", json=feedback)
    assert rated.status_code == 200, rated.text


def test_generate_applies_the_template_unless_raw(
    client: ollama.Client, http: httpx.Client, openai_server: LiveServer
) -> None:
    answer = client.generate(model="selftune", prompt="Once", system="Be brief.", options=SAMPLED)
    assert answer.done and answer.eval_count == 6 and isinstance(answer.response, str)
    parts = list(client.generate(model="base", prompt="Once", options=SAMPLED, stream=True))
    assert parts[-1].done and not any(part.done for part in parts[:-1])

    body = {"model": "selftune", "prompt": "Once", "raw": True, "options": SAMPLED}
    raw = http.post("/api/generate", json={**body, "stream": False}).json()
    ollama_schemas.OllamaGenerateChunk.model_validate(raw)
    row = _recorded(openai_server, raw["interaction_id"])
    assert row.kind == "completion" and row.messages == [{"prompt": "Once"}]
    templated = http.post("/api/generate", json={**body, "raw": False, "stream": False}).json()
    assert templated["prompt_eval_count"] > raw["prompt_eval_count"]
    assert _recorded(openai_server, templated["interaction_id"]).kind == "chat"


def test_nothing_to_answer_loads_the_model(client: ollama.Client) -> None:
    answer = client.generate(model="selftune", prompt="")
    assert answer.done and answer.done_reason == "load" and answer.response == ""


def test_format_json_answers_json(client: ollama.Client) -> None:
    answer = client.chat(
        model="selftune", messages=QUESTION, format="json", options={"temperature": 1, "seed": 3}
    )
    assert isinstance(json.loads(answer.message.content or ""), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    answer = client.chat(model="selftune", messages=QUESTION, format=schema, options=SAMPLED)
    assert isinstance(json.loads(answer.message.content or "")["n"], int)


def test_tools_are_described_to_the_model(http: httpx.Client, openai_server: LiveServer) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = {"model": "selftune", "messages": QUESTION, "tools": [tool], "stream": False}
    answer = http.post("/api/chat", json={**body, "options": SAMPLED})
    assert answer.status_code == 200, answer.text
    row = _recorded(openai_server, answer.json()["interaction_id"])
    assert row.messages[0]["role"] == "system" and "get_weather" in row.messages[0]["content"]


def test_embed_and_the_legacy_embeddings(client: ollama.Client) -> None:
    many = client.embed(model="selftune", input=["one", "two"])
    assert len(many.embeddings) == 2 and all(_unit(list(v)) for v in many.embeddings)
    one = client.embed(model="base", input="one")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == len(many.embeddings[0])
    legacy = client.embeddings(model="selftune", prompt="one")
    assert _unit(list(legacy.embedding))
    assert legacy.embedding == pytest.approx(many.embeddings[0], rel=1e-5)


def test_the_listings(client: ollama.Client, http: httpx.Client) -> None:
    listed = client.list()
    assert [m.model for m in listed.models][:2] == ["selftune", "base"]
    tags = http.get("/api/tags").json()
    ollama_schemas.OllamaTags.model_validate(tags)
    assert all(tag["name"] == tag["model"] for tag in tags["models"])

    shown = client.show("selftune")
    assert shown.capabilities and "completion" in shown.capabilities
    assert shown.modelinfo and 256 in shown.modelinfo.values()
    assert shown.parameters and "num_ctx 256" in shown.parameters
    ollama_schemas.OllamaShow.model_validate(http.post("/api/show", json={"model": "base"}).json())

    running = client.ps()
    assert [m.model for m in running.models] == ["selftune"]
    assert running.models[0].context_length == 256
    version = http.get("/api/version").json()
    assert ollama_schemas.OllamaVersion.model_validate(version).version.count(".") == 2


def test_errors_are_ollamas(client: ollama.Client, http: httpx.Client) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="nope", messages=QUESTION)
    assert unknown.value.status_code == 404 and "nope" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("nope")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as unsupported:
        client.generate(model="selftune", prompt="Once", options={"mirostat": 2})
    assert unsupported.value.status_code == 400 and "mirostat" in unsupported.value.error

    for body in [
        {"messages": QUESTION},  # no model
        {"model": "selftune", "messages": QUESTION, "options": {"no_such_option": 1}},
        {"model": "selftune", "messages": QUESTION, "think": True},
        {"model": "selftune", "messages": [{"role": "user", "content": "?", "images": ["x"]}]},
    ]:
        response = http.post("/api/chat", json=body)
        assert response.status_code == 400, body
        assert list(response.json()) == ["error"]
    template = {"model": "selftune", "prompt": "Hi", "template": "{{ .Prompt }}"}
    assert http.post("/api/generate", json=template).status_code == 400
    assert http.post("/api/embed", json={"model": "nope", "input": "x"}).status_code == 404


def test_the_root_says_ollama_is_running_and_browsers_get_the_dashboard(http: httpx.Client) -> None:
    plain = http.get("/")
    assert plain.status_code == 200 and plain.text == "Ollama is running"
    assert plain.headers["content-type"].startswith("text/plain")
    assert http.head("/").status_code == 200
    browser = http.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 200 and browser.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/app.js">' in browser.text  # the dashboard


def test_a_failure_mid_stream_is_an_error_line(
    client: ollama.Client, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(_generation: Generation) -> dict[str, int]:
        raise RuntimeError("the store is gone")

    monkeypatch.setattr(Generation, "record", fail)
    body = {"model": "selftune", "messages": QUESTION, "options": SAMPLED}
    with http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert not any(line["done"] for line in lines[:-1])
    assert lines[-1] == {"error": "the answer failed: the store is gone"}
    with pytest.raises(ollama.ResponseError, match="the store is gone"):
        list(client.generate(model="selftune", prompt="Once", options=SAMPLED, stream=True))


def test_keys_work_as_on_every_route(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    app = create_app(tiny_settings(tiny_model_dir, serve={"auth_required": True}), tiny_engine)
    alice = {"Authorization": f"Bearer {create_key(app.state.selftune.db, 'alice')}"}
    body = {"model": "selftune", "messages": QUESTION, "stream": False, "options": SAMPLED}
    with TestClient(app) as keyed:
        refused = keyed.post("/api/chat", json=body)
        assert refused.status_code == 401 and list(refused.json()) == ["error"]
        assert keyed.get("/api/tags").status_code == 401
        assert keyed.get("/api/version").status_code == 200  # open, as /health is
        answer = keyed.post("/api/chat", json=body, headers=alice)
        assert answer.status_code == 200, answer.text
        with app.state.selftune.db.read() as session:
            row = session.get(Interaction, answer.json()["interaction_id"])
            assert row is not None and row.user_id == "alice"


# The names ollama's API uses under /api/ (its docs/api.md): selftune's own routes never take one.
OLLAMA_NAMES = {
    "chat", "generate", "embed", "embeddings", "tags", "show", "version", "ps",
    "pull", "push", "create", "copy", "delete", "blobs",
}  # fmt: skip


def test_selftunes_own_api_routes_never_take_a_name_ollama_uses(openai_server: LiveServer) -> None:
    from selftune.api import ollama_routes

    ollamas = {route.path for route in ollama_routes.router.routes}  # type: ignore[attr-defined]
    for path in openai_server.app.openapi()["paths"]:
        parts = path.split("/")
        if len(parts) > 2 and parts[1] == "api" and parts[2] in OLLAMA_NAMES:
            assert path in ollamas, f"{path} is selftune's own but takes ollama's name {parts[2]!r}"
