"""Memory through the API, with the real embedding model (all-MiniLM-L6-v2) and the tiny chat
model: notes, imports under tags, hybrid search with tag filters, retrieval at chat time with
sources, a correction remembered at once, per-user scope, and deleting a user's memory."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.api.state import AppState
from selftune.config import Settings
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Interaction, MemoryRecord, MemoryTag, MemoryVector
from tests.integration.conftest import run_jobs, tiny_settings
from tests.unit.test_memory_embedder import build_sentence_model

GARDEN = (
    "Compost heaps need turning every week so that air reaches the middle. Mix green kitchen "
    "scraps with brown leaves, one part to three."
)
ENGINES = (
    "The turbofan engine of the Zephyr 400 airliner burns kerosene and has a bypass ratio of "
    "eleven to one."
)


def _settings(tiny_model_dir: Path, **overrides: Any) -> Settings:
    return tiny_settings(
        tiny_model_dir, memory={"enabled": True, **overrides.pop("memory", {})}, **overrides
    )


def _state(client: TestClient) -> AppState:
    state: AppState = client.app.state.selftune  # type: ignore[attr-defined]
    return state


def _settle(client: TestClient) -> None:
    memory = _state(client).memory
    assert memory is not None
    assert memory.settle(60), memory.error


@pytest.fixture
def long_engine(tiny_model_dir: Path) -> TransformersEngine:
    """The tiny model with room for passages: a quarter of its context is theirs."""
    return TransformersEngine(tiny_model_dir, context_length=1024)


@pytest.fixture
def served(
    settings_env: Path, tiny_model_dir: Path, long_engine: TransformersEngine
) -> Iterator[tuple[TestClient, Settings]]:
    settings = _settings(tiny_model_dir, serve={"context_length": 1024})
    with TestClient(create_app(settings, engine=long_engine)) as client:
        yield client, settings


def _search(client: TestClient, query: str, **body: Any) -> list[dict[str, Any]]:
    response = client.post("/api/memory/search", json={"query": query, **body})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _import(client: TestClient, settings: Settings, text: str, title: str, tags: list[str]) -> None:
    queued = client.post("/api/import", json={"text": text, "title": title, "tags": tags})
    assert queued.status_code == 202, queued.text
    run_jobs(settings)
    view = client.get(f"/api/imports/{queued.json()['import_id']}").json()
    assert view["state"] == "succeeded", view


def test_a_note_is_found_by_keyword_at_once_and_by_meaning_once_embedded(
    served: tuple[TestClient, Settings],
) -> None:
    client, _ = served
    added = client.post(
        "/api/memory", json={"text": "The wifi password is lantern-42.", "tags": ["Home"]}
    )
    assert added.status_code == 200, added.text
    assert added.json()["tags"] == ["home"]
    [hit] = _search(client, "wifi password", mode="keyword")
    assert hit["text"] == "The wifi password is lantern-42." and "home" in hit["tags"]
    _settle(client)
    [by_meaning] = _search(client, "how do I get on the wireless network?", mode="vector")
    assert by_meaning["id"] == hit["id"]
    explained = _search(client, "wifi password", explain=True)[0]["explain"]
    assert explained["keyword"]["rank"] == 1 and explained["vector"]["rank"] == 1


def test_imports_are_tagged_and_searched_by_channel(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    _import(client, settings, GARDEN, "Composting", ["garden"])
    _import(client, settings, ENGINES, "Zephyr 400", ["aviation"])
    _settle(client)
    with _state(client).db.read() as session:
        records = session.scalars(select(MemoryRecord).where(MemoryRecord.kind == "chunk")).all()
        assert len(records) == 2
        origins = {
            (t.tag, t.origin)
            for t in session.scalars(select(MemoryTag).where(MemoryTag.record_id == records[0].id))
        }
        vectors = session.scalars(select(MemoryVector)).all()
    assert ("garden", "user") in origins and ("compost", "auto") in origins
    assert {v.model for v in vectors} == {"all-MiniLM-L6-v2"} and {v.dim for v in vectors} == {384}
    top = _search(client, "what fuel does the airliner use?")[0]
    assert top["title"] == "Zephyr 400" and top["source"] == "text"
    only_garden = _search(client, "what fuel does the airliner use?", tags={"any": ["garden"]})
    assert [h["title"] for h in only_garden] == ["Composting"]
    assert _search(client, "airliner fuel", tags={"none": ["aviation", "garden"]}) == []
    assert _search(client, "airliner", tags={"all": ["aviation", "garden"]}) == []
    tags = {t["tag"]: t["count"] for t in client.get("/api/memory/tags").json()["data"]}
    assert tags["garden"] == 1 and tags["aviation"] == 1


def test_a_chat_with_memory_gets_passages_with_their_sources_and_records_them(
    served: tuple[TestClient, Settings],
) -> None:
    client, settings = served
    _import(client, settings, ENGINES, "Zephyr 400", ["aviation"])
    _import(client, settings, GARDEN, "Composting", ["garden"])
    _settle(client)
    response = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "What is the bypass ratio of the Zephyr?"}],
            "memory": {"k": 1},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    [passage] = body["memory"]
    assert passage["title"] == "Zephyr 400" and "bypass ratio" in passage["text"]
    with _state(client).db.read() as session:
        interaction = session.get(Interaction, body["id"])
        assert interaction is not None
        assert interaction.memory == body["memory"]
        # The recorded messages are the user's, without the passages.
        assert interaction.messages == [
            {"role": "user", "content": "What is the bypass ratio of the Zephyr?"}
        ]
    plain = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello"}]}
    ).json()
    assert "memory" not in plain  # retrieval is off unless asked for (memory.retrieval)


def test_a_streamed_chat_carries_its_passages_in_the_first_event(
    served: tuple[TestClient, Settings],
) -> None:
    client, _ = served
    client.post("/api/memory", json={"text": "Our office plant is called Gerald."})
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "What is the office plant called?"}],
            "memory": True,
            "stream": True,
        },
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    first = json.loads(lines[0][6:])
    assert first["memory"][0]["text"] == "Our office plant is called Gerald."
    assert all("memory" not in json.loads(line[6:]) for line in lines[1:])


def test_a_correction_is_in_memory_for_the_very_next_chat(
    served: tuple[TestClient, Settings],
) -> None:
    client, _ = served
    question = "Who maintains the billing service?"
    # Sampled: the tiny model's greedy answer is blank, and a blank answer is not remembered.
    first = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": question}],
            "temperature": 1,
            "seed": 3,
            "tags": ["Ops"],
        },
    ).json()
    assert first["choices"][0]["message"]["content"].strip()
    _settle(client)
    [remembered] = _search(client, "billing service")
    assert remembered["kind"] == "interaction" and "ops" in remembered["tags"]
    rated = client.post(
        "/api/feedback",
        json={"interaction_id": first["id"], "rating": -1, "correction": "Priya's team does."},
    )
    assert rated.status_code == 200, rated.text
    # No waiting: the correction is found at once, and the wrong answer is gone.
    again = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "memory": {"k": 2}},
    ).json()
    assert again["memory"][0]["kind"] == "correction"
    assert "Priya's team does." in again["memory"][0]["text"]
    # The answer rated down left memory (it was the only chat before this one).
    assert all(p["kind"] != "interaction" for p in again["memory"])


def test_memory_is_per_user_and_deleting_it_removes_what_was_derived(
    settings_env: Path, tiny_model_dir: Path, long_engine: TransformersEngine
) -> None:
    settings = _settings(tiny_model_dir, serve={"auth_required": True, "context_length": 1024})
    with TestClient(create_app(settings, engine=long_engine)) as client:
        db = _state(client).db
        ann = {"Authorization": f"Bearer {create_key(db, 'ann')}"}
        bob = {"Authorization": f"Bearer {create_key(db, 'bob')}"}
        admin = {"Authorization": f"Bearer {create_key(db, 'root', admin=True)}"}
        note = {"text": "Ann's locker code is 4417.", "tags": ["private"]}
        assert client.post("/api/memory", json=note, headers=ann).status_code == 200
        shared = {"text": "The locker room opens at 7.", "tags": ["lockers"], "shared": True}
        refused = client.post("/api/memory", json=shared, headers=bob)
        assert refused.status_code == 403
        assert client.post("/api/memory", json=shared, headers=admin).status_code == 200
        _settle(client)

        def texts(headers: dict[str, str], **body: Any) -> set[str]:
            response = client.post(
                "/api/memory/search", json={"query": "locker code", **body}, headers=headers
            )
            assert response.status_code == 200, response.text
            return {hit["text"] for hit in response.json()["data"]}

        assert texts(ann) == {"Ann's locker code is 4417.", "The locker room opens at 7."}
        assert texts(bob) == {"The locker room opens at 7."}
        assert texts(admin, user="ann") == {"Ann's locker code is 4417."}
        other = client.post(
            "/api/memory/search", json={"query": "locker", "user": "ann"}, headers=bob
        )
        assert other.status_code == 403
        bob_tags = client.get("/api/memory/tags", headers=bob).json()["data"]
        assert "private" not in {t["tag"] for t in bob_tags}
        chat = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "What is the locker code?"}],
                "memory": True,
            },
            headers=bob,
        ).json()
        assert all("4417" not in p["text"] for p in chat["memory"])

        deleted = client.delete("/api/memory", headers=ann)
        assert deleted.json() == {"user": "ann", "deleted": 1}
        assert texts(ann) == {"The locker room opens at 7."}
        with db.read() as session:
            assert (
                session.scalars(select(MemoryRecord).where(MemoryRecord.user_id == "ann")).all()
                == []
            )
        assert client.delete("/api/memory?user=ann", headers=bob).status_code == 403


def test_memory_off_says_how_to_turn_it_on(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    settings = tiny_settings(tiny_model_dir)
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        response = client.post("/api/memory/search", json={"query": "anything"})
        assert response.status_code == 409
        assert "memory.enabled" in response.json()["error"]["message"]
        chat = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "memory": True},
        )
        assert chat.status_code == 400 and chat.json()["error"]["code"] == "memory_disabled"


def test_changing_the_embedding_model_reembeds_while_search_goes_on(
    settings_env: Path, tiny_model_dir: Path, long_engine: TransformersEngine, tmp_path: Path
) -> None:
    note = {"text": "The spare key hangs behind the boiler.", "tags": ["home"]}
    first = _settings(tiny_model_dir, serve={"context_length": 1024})
    with TestClient(create_app(first, engine=long_engine)) as client:
        assert client.post("/api/memory", json=note).status_code == 200
        _settle(client)
    folder = build_sentence_model(tmp_path / "tiny-embedder", seed=1)
    second = _settings(
        tiny_model_dir, serve={"context_length": 1024}, memory={"embedding_model": str(folder)}
    )
    with TestClient(create_app(second, engine=long_engine)) as client:
        memory = _state(client).memory
        assert memory is not None and memory.settle(60)
        # The old model still answers searches by meaning until every record is re-embedded.
        assert memory.model == "all-MiniLM-L6-v2"
        [hit] = _search(client, "where is the key to the house?", mode="vector")
        assert hit["text"] == note["text"]
        jobs = client.get("/api/jobs").json()["data"]
        assert [j["kind"] for j in jobs] == ["memory_reembed"]
        run_jobs(second)
        job = client.get(f"/api/jobs/{jobs[0]['job_id']}").json()
        assert job["status"] == "succeeded", job
        assert job["result"]["embedded"] == 1 and job["result"]["dim"] == 32
        memory._switch_checked = 0.0  # look now rather than within the minute
        memory.wake()
        assert memory.settle(60)
        deadline = time.monotonic() + 30
        while memory.model == "all-MiniLM-L6-v2" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert memory.model is not None and memory.model.startswith("tiny-embedder@")
        assert [h["text"] for h in _search(client, "spare key", mode="vector")] == [note["text"]]


def test_the_served_model_can_be_the_embedding_model(
    settings_env: Path, tiny_model_dir: Path, long_engine: TransformersEngine
) -> None:
    settings = _settings(
        tiny_model_dir, serve={"context_length": 1024}, memory={"embedding_model": "served"}
    )
    with TestClient(create_app(settings, engine=long_engine)) as client:
        _import(client, settings, GARDEN, "Composting", ["garden"])
        client.post("/api/memory", json={"text": "The bike lock combination is 0712."})
        _settle(client)
        memory = _state(client).memory
        assert memory is not None and memory.model == f"served:{tiny_model_dir}"
        with _state(client).db.read() as session:
            dims = set(session.scalars(select(MemoryVector.dim)))
        assert dims == {64}  # the tiny model's hidden size
        hits = _search(client, "bike lock combination", mode="vector", k=2)
        assert {h["text"] for h in hits} >= {"The bike lock combination is 0712."}


def test_the_vector_index_is_saved_and_rebuilt_from_the_store_when_lost(
    settings_env: Path, tiny_model_dir: Path, long_engine: TransformersEngine
) -> None:
    settings = _settings(tiny_model_dir, serve={"context_length": 1024})
    note = {"text": "The spare key hangs behind the boiler."}
    with TestClient(create_app(settings, engine=long_engine)) as client:
        assert client.post("/api/memory", json=note).status_code == 200
        _settle(client)
    folder = settings.data_dir / "memory"
    [index_file] = folder.glob("vectors-*.faiss")
    [description] = folder.glob("vectors-*.json")
    assert json.loads(description.read_text())["spec"] == "all-MiniLM-L6-v2"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files
    for damage in ("truncated", "deleted"):
        if damage == "truncated":
            index_file.write_bytes(index_file.read_bytes()[:100])
        else:
            index_file.unlink()
        with TestClient(create_app(settings, engine=long_engine)) as client:
            _settle(client)
            [hit] = _search(client, "where is the key to the house?", mode="vector")
            assert hit["text"] == note["text"], damage
        assert index_file.exists()


def test_any_query_text_is_searched_as_words_never_as_query_syntax(
    served: tuple[TestClient, Settings],
) -> None:
    client, _ = served
    client.post("/api/memory", json={"text": 'The "title" column: NEAR the end, a*b OR c.'})
    for query in ('"', "NEAR(", "title:", "a*", "-", "^x", "OR AND NOT", "'; DROP TABLE x; --"):
        response = client.post("/api/memory/search", json={"query": query, "mode": "keyword"})
        assert response.status_code == 200, (query, response.text)
    assert _search(client, "title column", mode="keyword")[0]["text"].startswith("The")
    bad = client.post("/api/memory/search", json={"query": "x", "tags": {"any": ["x" * 65]}})
    assert bad.status_code == 400 and bad.json()["error"]["param"]


def test_chats_answered_while_memory_was_off_are_remembered_when_it_comes_on(
    settings_env: Path, tiny_model_dir: Path, long_engine: TransformersEngine
) -> None:
    chat = {
        "messages": [{"role": "user", "content": "Which printer is on the third floor?"}],
        "temperature": 1,
        "seed": 3,
    }
    off = tiny_settings(tiny_model_dir, serve={"context_length": 1024})
    with TestClient(create_app(off, engine=long_engine)) as client:
        kept = client.post("/v1/chat/completions", json=chat).json()
        rated = client.post("/v1/chat/completions", json=chat).json()
        client.post("/api/feedback", json={"interaction_id": rated["id"], "rating": -1})
    on = _settings(tiny_model_dir, serve={"context_length": 1024})
    with TestClient(create_app(on, engine=long_engine)) as client:
        _settle(client)
        hits = _search(client, "printer third floor", mode="keyword")
        assert [h["source_id"] for h in hits] == [kept["id"]]  # the rated-down one stays out
    with TestClient(create_app(on, engine=long_engine)) as client:
        _settle(client)  # a second start finds nothing more to remember
        assert len(_search(client, "printer third floor", mode="keyword")) == 1
