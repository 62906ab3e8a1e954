"""The memory's embedding models: the real default, all-MiniLM-L6-v2 (bundled, about 90 MB,
a few seconds to load on a CPU), on its own and through the HTTP API, and a configured folder
served by its name."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from selftune.api import embeddings
from selftune.api.app import create_app
from selftune.engines.transformers_engine import TransformersEngine
from selftune.memory.embedder import DEFAULT_EMBEDDING_MODEL, embedder_name, load_embedder
from tests.integration.conftest import tiny_settings
from tests.unit.test_memory_embedder import DIM, build_sentence_model

CAT, RUG, STOCKS = (
    "The cat sat on the mat",
    "A cat was sitting on a rug",
    "Stock prices fell sharply",
)


def test_the_default_model_puts_similar_sentences_closer() -> None:
    embedder = load_embedder(DEFAULT_EMBEDDING_MODEL)
    assert (embedder.name, embedder.dim, embedder.max_tokens) == (DEFAULT_EMBEDDING_MODEL, 384, 256)
    cat, rug, stocks = embedder.embed([CAT, RUG, STOCKS])
    assert np.linalg.norm(cat) == pytest.approx(1.0, abs=1e-5)
    assert float(cat @ rug) > 0.5 > 0.2 > max(float(cat @ stocks), float(rug @ stocks))
    assert load_embedder("sentence-transformers/all-MiniLM-L6-v2") is embedder


def test_the_default_model_over_http(client: TestClient) -> None:
    # The TestClient is an httpx.Client: the SDK sends through it (and is not closed, which
    # would close it).
    sdk = OpenAI(base_url=f"{client.base_url}/v1", api_key="sk-no-key-required", http_client=client)
    answer = sdk.embeddings.create(model=DEFAULT_EMBEDDING_MODEL, input=[CAT, RUG, STOCKS])
    assert answer.model == DEFAULT_EMBEDDING_MODEL
    vectors = np.array([item.embedding for item in answer.data])
    assert vectors.shape == (3, 384)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    expected = load_embedder(DEFAULT_EMBEDDING_MODEL).embed([CAT, RUG, STOCKS])
    assert vectors == pytest.approx(expected, abs=1e-5)
    assert answer.usage.prompt_tokens == 8 + 9 + 6  # WordPiece, with [CLS] and [SEP]
    listed = {model.id: model for model in sdk.models.list()}
    assert listed[DEFAULT_EMBEDDING_MODEL].owned_by == "selftune"
    assert sdk.models.retrieve(DEFAULT_EMBEDDING_MODEL).id == DEFAULT_EMBEDDING_MODEL
    plain = client.post("/v1/embeddings", json={"model": DEFAULT_EMBEDDING_MODEL, "input": CAT})
    assert "X-Selftune-Version" not in plain.headers  # no version of the served model made it
    llama = client.post("/embedding", json={"model": DEFAULT_EMBEDDING_MODEL, "content": CAT})
    assert llama.json()[0]["embedding"][0] == pytest.approx(expected[0].tolist(), abs=1e-5)
    too_long = client.post(
        "/v1/embeddings", json={"model": DEFAULT_EMBEDDING_MODEL, "input": "word " * 300}
    )
    assert too_long.status_code == 400 and "at most 256" in too_long.json()["error"]["message"]


def test_listing_loads_nothing_and_loading_runs_in_a_thread(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def fake_load(spec: str, *, device: str = "cpu") -> Any:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # not on the event loop
        asked.append(f"{spec} on {device}")
        return load_embedder(spec, device=device)

    monkeypatch.setattr(embeddings, "load_embedder", fake_load)
    ids = [card["id"] for card in client.get("/v1/models").json()["data"]]
    assert ids[:2] == ["selftune", "base"] and DEFAULT_EMBEDDING_MODEL in ids
    client.post("/v1/embeddings", json={"input": "x"})  # the served model
    assert asked == []
    response = client.post("/v1/embeddings", json={"model": DEFAULT_EMBEDDING_MODEL, "input": "x"})
    assert response.status_code == 200, response.text
    assert asked == [f"{DEFAULT_EMBEDDING_MODEL} on cpu"]


@pytest.fixture
def configured_client(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine, tmp_path: Path
) -> Iterator[tuple[TestClient, Path]]:
    folder = build_sentence_model(tmp_path / "notes-model", seed=3)
    settings = tiny_settings(tiny_model_dir, memory={"embedding_model": str(folder)})
    with TestClient(create_app(settings, engine=tiny_engine)) as test_client:
        yield test_client, folder


def test_a_configured_folder_is_served_by_its_name(
    configured_client: tuple[TestClient, Path],
) -> None:
    client, folder = configured_client
    name = embedder_name(str(folder))
    assert name.startswith("notes-model@")
    ids = [card["id"] for card in client.get("/v1/models").json()["data"]]
    assert ids[-2:] == [DEFAULT_EMBEDDING_MODEL, name]
    for model in (name, str(folder)):
        body = client.post("/v1/embeddings", json={"model": model, "input": ["hello world"]})
        assert body.status_code == 200, body.text
        assert body.json()["model"] == name
        assert len(body.json()["data"][0]["embedding"]) == DIM
    missing = client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert missing.status_code == 404 and name in missing.json()["error"]["message"]


def test_a_configured_model_that_cannot_load_says_why(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine, tmp_path: Path
) -> None:
    settings = tiny_settings(tiny_model_dir, memory={"embedding_model": str(tmp_path / "gone")})
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        ids = [card["id"] for card in client.get("/v1/models").json()["data"]]
        assert ids[-1] == DEFAULT_EMBEDDING_MODEL  # the broken one is not offered
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200
        response = client.post(
            "/v1/embeddings", json={"model": str(tmp_path / "gone"), "input": "x"}
        )
        assert response.status_code == 500
        message = response.json()["error"]["message"]
        assert (
            "memory.embedding_model" in message and "sentence-transformers model folder" in message
        )
