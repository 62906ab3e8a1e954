"""The embeddings' export through the API, with the real embedding model (all-MiniLM-L6-v2):
Parquet and .npz read back equal to the store, each caller's export holds only what it may
see, and a format or model that is not there is refused."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.db import Database
from selftune.store.schema import MemoryTag, MemoryVector
from tests.integration.conftest import tiny_settings

Headers = dict[str, str]


@pytest.fixture
def served(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[tuple[TestClient, dict[str, Headers], dict[str, list[int]]]]:
    """ann with two private notes, bob with one, and a shared one: all embedded."""
    settings = tiny_settings(
        tiny_model_dir, memory={"enabled": True}, serve={"auth_required": True}
    )
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        state = client.app.state.selftune  # type: ignore[attr-defined]
        keys = {
            name: {"Authorization": f"Bearer {create_key(state.db, name, admin=name == 'root')}"}
            for name in ("ann", "bob", "root")
        }
        notes = {
            "ann": [("Ann's locker code is 4417.", ["lockers", "ann"], False)],
            "bob": [("Bob parks on level two.", ["parking"], False)],
            "root": [("The building opens at seven.", ["building"], True)],
        }
        notes["ann"].append(("Ann waters the office plants on Fridays.", ["plants"], False))
        ids: dict[str, list[int]] = {}
        for user, items in notes.items():
            for text, tags, shared in items:
                body = {"text": text, "tags": tags, "shared": shared}
                response = client.post("/api/memory", json=body, headers=keys[user])
                assert response.status_code == 200, response.text
                ids.setdefault(user, []).append(response.json()["id"])
        assert state.memory.settle(60), state.memory.error
        yield client, keys, ids


def _store(client: TestClient) -> tuple[dict[int, bytes], dict[int, list[str]]]:
    db: Database = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        vectors = {
            v.record_id: v.vector
            for v in session.scalars(
                select(MemoryVector).where(MemoryVector.model == "all-MiniLM-L6-v2")
            )
        }
        tags: dict[int, list[str]] = {}
        for tag in session.scalars(select(MemoryTag).order_by(MemoryTag.tag)):
            tags.setdefault(tag.record_id, []).append(tag.tag)
    return vectors, tags


def _export(client: TestClient, headers: Headers, query: str) -> bytes:
    response = client.get(f"/api/memory/export?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return response.content


def test_parquet_holds_what_the_caller_sees_with_its_vectors(
    served: tuple[TestClient, dict[str, Headers], dict[str, list[int]]],
) -> None:
    client, keys, ids = served
    response = client.get("/api/memory/export?format=parquet", headers=keys["ann"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert 'filename="memory-all-MiniLM-L6-v2.parquet"' in response.headers["content-disposition"]
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column("id").to_pylist() == sorted(ids["ann"] + ids["root"])
    vectors, tags = _store(client)
    # created_at as integers: with usearch loaded first (memory's index), pyarrow 26 crashes
    # turning zoned timestamps into Python datetimes.
    stamps = table.column("created_at").cast(pa.int64()).to_pylist()
    assert all(abs(stamp / 1e6 - time.time()) < 600 for stamp in stamps)
    for row in table.drop_columns(["created_at"]).to_pylist():
        vector = np.array(row["vector"], dtype=np.float32)
        assert row["dim"] == 384 and vector.shape == (384,)
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        assert vector.tobytes() == vectors[row["id"]]
        assert row["tags"] == tags[row["id"]]
        assert row["model"] == "all-MiniLM-L6-v2"
        assert row["user"] == ("root" if row["id"] in ids["root"] else "ann")
        assert row["shared"] is (row["id"] in ids["root"])
    assert "lockers" in table.column("tags").to_pylist()[0]


def test_npz_holds_ids_vectors_and_metadata_in_one_order(
    served: tuple[TestClient, dict[str, Headers], dict[str, list[int]]],
) -> None:
    client, keys, ids = served
    response = client.get("/api/memory/export?format=npz", headers=keys["ann"])
    assert response.headers["content-type"] == "application/zip"
    archive = np.load(io.BytesIO(response.content))
    assert archive["ids"].tolist() == sorted(ids["ann"] + ids["root"])
    assert archive["vectors"].dtype == np.float32 and archive["vectors"].shape == (3, 384)
    assert np.allclose(np.linalg.norm(archive["vectors"], axis=1), 1, atol=1e-5)
    vectors, tags = _store(client)
    metadata = [json.loads(line) for line in archive["metadata.jsonl"].decode().splitlines()]
    for record_id, vector, meta in zip(archive["ids"], archive["vectors"], metadata, strict=True):
        assert vector.tobytes() == vectors[int(record_id)]
        assert meta["id"] == record_id and meta["tags"] == tags[int(record_id)]


def test_each_caller_exports_only_what_it_may_see(
    served: tuple[TestClient, dict[str, Headers], dict[str, list[int]]],
) -> None:
    client, keys, ids = served
    bob = np.load(io.BytesIO(_export(client, keys["bob"], "format=npz")))["ids"].tolist()
    assert bob == sorted(ids["bob"] + ids["root"]) and not set(bob) & set(ids["ann"])
    parquet = pq.read_table(io.BytesIO(_export(client, keys["bob"], "format=parquet")))
    assert not set(parquet.column("id").to_pylist()) & set(ids["ann"])
    everything = np.load(io.BytesIO(_export(client, keys["root"], "format=npz")))["ids"]
    assert everything.tolist() == sorted(i for user in ids.values() for i in user)
    only_ann = np.load(io.BytesIO(_export(client, keys["root"], "format=npz&user=ann")))["ids"]
    assert only_ann.tolist() == ids["ann"]
    refused = client.get("/api/memory/export?user=ann", headers=keys["bob"])
    assert refused.status_code == 403


def test_an_unknown_format_or_model_is_refused(
    served: tuple[TestClient, dict[str, Headers], dict[str, list[int]]],
) -> None:
    client, keys, _ = served
    response = client.get("/api/memory/export?format=csv", headers=keys["ann"])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "query.format"
    assert "parquet" in error["message"]
    unknown = client.get("/api/memory/export?model=nomic-embed", headers=keys["ann"])
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    named = client.get("/api/memory/export?model=all-MiniLM-L6-v2", headers=keys["ann"])
    assert named.status_code == 200
