"""Embeddings on the tiny model: OpenAI's /v1/embeddings and llama.cpp's /embedding."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api import embeddings
from selftune.api.embeddings import Embedder
from selftune.api.state import AppState

HIDDEN = 64  # the tiny model's hidden size


def _embed(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_openai_embeddings_shape_and_normalization(versioned_client: TestClient) -> None:
    client = versioned_client
    one = _embed(client, input="Hello world", model="selftune")
    assert one["object"] == "list" and one["model"] == "selftune"
    [item] = one["data"]
    assert (item["object"], item["index"]) == ("embedding", 0)
    assert len(item["embedding"]) == HIDDEN
    assert _norm(item["embedding"]) == pytest.approx(1.0, abs=1e-5)
    tokens = client.post("/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert one["usage"] == {"prompt_tokens": len(tokens), "total_tokens": len(tokens)}

    many = _embed(client, input=["Hello world", "Something else", "Hello world"])
    vectors = [d["embedding"] for d in many["data"]]
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    assert vectors[0] == pytest.approx(item["embedding"], abs=1e-6)
    assert vectors[2] == pytest.approx(vectors[0], abs=1e-6)
    assert vectors[1] != pytest.approx(vectors[0], abs=1e-3)
    from_ids = _embed(client, input=tokens)["data"][0]["embedding"]
    assert from_ids == pytest.approx(item["embedding"], abs=1e-6)

    packed = _embed(client, input="Hello world", encoding_format="base64")["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(item["embedding"], abs=1e-6)


def test_embeddings_of_a_version(versioned_client: TestClient) -> None:
    client = versioned_client
    base = _embed(client, input="Hello world", model="base")["data"][0]["embedding"]
    response = client.post("/v1/embeddings", json={"input": "Hello world", "model": "v1"})
    assert response.headers["X-Selftune-Version"] == "v1"
    adapted = response.json()["data"][0]["embedding"]
    assert _norm(adapted) == pytest.approx(1.0, abs=1e-5)
    assert adapted != pytest.approx(base, abs=1e-3)  # the adapter changes the hidden states
    served = client.post("/v1/embeddings", json={"input": "Hello world"})
    assert served.headers["X-Selftune-Version"] == "base"


def test_llamacpp_embedding(versioned_client: TestClient) -> None:
    client = versioned_client
    openai = _embed(client, input="Hello world")["data"][0]["embedding"]
    response = client.post("/embedding", json={"content": "Hello world"})
    assert response.status_code == 200, response.text
    [item] = response.json()
    assert item["index"] == 0
    [vector] = item["embedding"]  # pooled: one row
    assert vector == pytest.approx(openai, abs=1e-6)
    raw = client.post("/embedding", json={"content": "Hello world", "embd_normalize": -1}).json()
    assert _norm(raw[0]["embedding"][0]) != pytest.approx(1.0, abs=1e-3)
    taxicab = client.post("/embedding", json={"content": "Hello world", "embd_normalize": 1})
    assert sum(abs(x) for x in taxicab.json()[0]["embedding"][0]) == pytest.approx(1.0, abs=1e-5)
    two = client.post("/embedding", json={"content": ["a", "b"]}).json()
    assert [i["index"] for i in two] == [0, 1]


def test_embedding_errors(versioned_client: TestClient) -> None:
    client = versioned_client

    def error(path: str, body: Any, status: int) -> str:
        response = client.post(path, json=body)
        assert response.status_code == status, response.text
        message: str = response.json()["error"]["message"]
        return message

    message = error("/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"}, 404)
    assert "selftune" in message and "base" in message and "v1" in message
    assert "non-empty" in error("/v1/embeddings", {"input": []}, 400)
    error("/v1/embeddings", {"input": ["a", 1]}, 400)
    error("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400)
    assert "too large" in error("/v1/embeddings", {"input": "word " * 300}, 400)
    assert "content" in error("/embedding", {}, 400)


def test_a_registered_embedding_model_is_offered_by_name(
    versioned_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(_state: AppState) -> Embedder:
        return Embedder(
            model="fake-embedder",
            version=None,
            embed=lambda texts: [[3.0, 4.0] for _ in texts],
            count_tokens=len,
            max_tokens=100,
        )

    monkeypatch.setitem(embeddings._MODELS, "fake-embedder", fake)
    body = _embed(versioned_client, input=["abc", "de"], model="fake-embedder")
    assert body["model"] == "fake-embedder"
    assert body["data"][0]["embedding"] == pytest.approx([0.6, 0.8])
    assert body["usage"]["prompt_tokens"] == 5
    missing = versioned_client.post("/v1/embeddings", json={"input": "x", "model": "nope"})
    assert "fake-embedder" in missing.json()["error"]["message"]
    ids = versioned_client.post("/v1/embeddings", json={"input": [1, 2], "model": "fake-embedder"})
    assert ids.status_code == 400
