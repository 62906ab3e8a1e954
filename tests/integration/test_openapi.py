"""``/openapi.json`` documents every response, and the documented models are what the routes send.

Some routes build their JSON themselves (the OpenAI, llama.cpp and embedding shapes, byte for
byte), so their models only document it: here the real bodies are checked against those models,
whose ``extra="forbid"`` catches a field that one has and the other has not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api import responses

# FastAPI's 200 for a handler that declares nothing: any JSON at all.
UNDOCUMENTED = {"application/json": {"schema": {}}}
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
REF = "#/components/schemas/"
OLLAMA_ERROR = {"$ref": REF + "OllamaError"}
OLLAMA_ROUTES = {
    "GET /",
    "GET /api/ps",
    "GET /api/tags",
    "GET /api/version",
    "POST /api/chat",
    "POST /api/embed",
    "POST /api/embeddings",
    "POST /api/generate",
    "POST /api/show",
}


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_every_operation_documents_its_success(client: TestClient) -> None:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    operations = dict(_operations(schema))
    assert len(operations) >= 25
    for name, operation in operations.items():
        successes = {code: r for code, r in operation["responses"].items() if code[0] == "2"}
        assert successes, name
        for code, response in successes.items():
            content = response.get("content")
            assert content and content != UNDOCUMENTED, f"{name} {code}: {content}"
            for media_type, body in content.items():
                assert body.get("schema"), f"{name} {code} {media_type}"


def test_errors_are_documented_as_openai_error_bodies(client: TestClient) -> None:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "ErrorBody" in schema["components"]["schemas"]
    for name, operation in _operations(schema):
        documented = operation["responses"]
        assert "422" not in documented, name  # invalid requests are 400s with an error body
        if name == "GET /health":  # llama.cpp's own shape, while the model loads
            assert documented["503"]["content"]["application/json"]["schema"] == {
                "$ref": REF + "HealthNotReady"
            }
            continue
        # ollama's routes answer ollama's {"error": "..."} (api/ollama_routes.py).
        expected = OLLAMA_ERROR if name in OLLAMA_ROUTES else ERROR_BODY
        for code in ("4XX", "5XX"):
            assert documented[code]["content"]["application/json"]["schema"] == expected, name


def _check_body(schema: dict[str, Any], body: Any) -> None:
    """Validate ``body`` against the documented schema: a model, or a list of one."""
    if schema.get("type") == "array":
        model = getattr(responses, schema["items"]["$ref"].removeprefix(REF))
        assert isinstance(body, list) and body
        for item in body:
            model.model_validate(item)
    else:
        getattr(responses, schema["$ref"].removeprefix(REF)).model_validate(body)


def _documented(client: TestClient, method: str, path: str, status: int) -> dict[str, Any]:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    operation = schema["paths"][path][method.lower()]
    documented: dict[str, Any] = operation["responses"][str(status)]["content"]
    return documented


CHAT = {"model": "selftune", "messages": [{"role": "user", "content": "Hello there"}]}
REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/chat/completions", {**CHAT, "max_tokens": 3}),
    ("POST", "/v1/completions", {"model": "v1", "prompt": "Once", "max_tokens": 3}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/embeddings", {"input": ["one", "two"]}),
    ("POST", "/v1/embeddings", {"input": "one", "encoding_format": "base64"}),
    ("POST", "/embedding", {"content": "one"}),
    ("POST", "/completion", {"prompt": "Once", "n_predict": 3, "stop": ["\n"]}),
    ("POST", "/completion", {"prompt": "Once", "n_predict": 3, "lora": [{"id": 1, "scale": 1}]}),
    ("POST", "/tokenize", {"content": "Hello"}),
    ("POST", "/tokenize", {"content": "Hello", "with_pieces": True}),
    ("POST", "/detokenize", {"tokens": [1, 2]}),
    ("POST", "/apply-template", {"messages": [{"role": "user", "content": "Hi"}]}),
    ("GET", "/props", None),
    ("GET", "/slots", None),
    ("GET", "/lora-adapters", None),
    ("GET", "/api/versions", None),
    ("GET", "/health", None),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
def test_json_bodies_are_what_the_schema_says(
    versioned_client: TestClient, method: str, path: str, body: Any
) -> None:
    response = versioned_client.request(method, path, json=body)
    assert response.status_code == 200, response.text
    content = _documented(versioned_client, method, path, 200)
    assert response.headers["content-type"] == "application/json"
    _check_body(content["application/json"]["schema"], response.json())


def test_streams_and_text_are_served_as_documented(versioned_client: TestClient) -> None:
    for path, body in [
        ("/v1/chat/completions", {**CHAT, "max_tokens": 3, "stream": True}),
        (
            "/v1/completions",
            {"model": "selftune", "prompt": "Once", "max_tokens": 3, "stream": True},
        ),
        ("/completion", {"prompt": "Once", "n_predict": 3, "stream": True}),
    ]:
        response = versioned_client.post(path, json=body)
        assert response.status_code == 200, response.text
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type in _documented(versioned_client, "POST", path, 200), path
        assert media_type == "text/event-stream"
    metrics = versioned_client.get("/metrics")
    assert metrics.headers["content-type"] in _documented(versioned_client, "GET", "/metrics", 200)


def test_the_last_event_of_a_llamacpp_stream_is_the_documented_object(
    versioned_client: TestClient,
) -> None:
    response = versioned_client.post(
        "/completion", json={"prompt": "Once", "n_predict": 3, "stream": True}
    )
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    responses.LlamaCompletion.model_validate_json(events[-1])


def test_errors_are_the_documented_error_body(versioned_client: TestClient) -> None:
    for method, path, body in [
        ("POST", "/v1/chat/completions", {"model": "selftune", "messages": []}),  # 400
        ("POST", "/v1/chat/completions", {**CHAT, "model": "v9"}),  # 404
        ("GET", "/api/jobs/12345", None),  # 404
        ("POST", "/api/rollback", {}),  # 409: nothing to roll back
    ]:
        response = versioned_client.request(method, path, json=body)
        assert 400 <= response.status_code < 500, response.text
        responses.ErrorBody.model_validate(response.json())
