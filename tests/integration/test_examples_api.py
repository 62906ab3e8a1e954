"""Examples submitted directly (``/api/examples``): OpenAI's fine-tuning format in, curated,
stored scrubbed with provenance and reasons, listed per owner, and exported back as JSONL."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.curate import scrub
from selftune.data.curation import active_examples
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import TrainingExample
from tests.integration.conftest import tiny_settings

JSONL = {"Content-Type": "application/jsonl"}
# 64 made-up words, so that generated chats share no phrasing by chance.
WORDS = [
    a + b
    for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti")
    for b in ("ban", "dor", "fel", "gim", "har", "jot", "lup", "mes")
]


def _chat(question: str, answer: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _stored(client: TestClient) -> list[TrainingExample]:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        return list(session.scalars(select(TrainingExample).order_by(TrainingExample.id)))


def _jsonl(conversations: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(c) + "\n" for c in conversations).encode()


def _export(client: TestClient, **params: str) -> list[dict[str, Any]]:
    response = client.get("/api/examples/export", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    return [json.loads(line) for line in response.text.splitlines()]


def test_one_conversation_is_kept_listed_and_trained_on(client: TestClient) -> None:
    chat = _chat("How do I descale a kettle?", "Boil equal parts vinegar and water, then rinse.")
    answer = client.post("/api/examples", json=chat)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["kept"], body["rejected"], body["flagged"], body["not_kept"]) == (1, 0, 0, [])
    [example_id] = body["ids"]

    listed = client.get("/api/examples").json()
    assert listed["has_more"] is False and listed["last_id"] == example_id
    [item] = listed["data"]
    assert item["id"] == example_id and item["user"] == "anonymous"
    assert (item["source"], item["state"], item["active"], item["reason"]) == (
        "submitted",
        "kept",
        True,
        None,
    )
    assert item["messages"] == chat["messages"]
    assert item["provenance"]["importer"] == "api" and item["provenance"]["format"] == "json"
    assert len(item["provenance"]["sha256"]) == 64
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        assert [e.id for e in active_examples(session)] == [example_id]
    assert _export(client) == [chat]


def _thousand(rng: random.Random) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """1,000 conversations, and the line (from 1) of each one curation must not keep, with
    the reason: planted exact and near copies, chats too short, a conflicting answer."""
    chats: list[dict[str, Any]] = []
    planted: dict[int, str] = {}
    for n in range(1, 1001):
        if n % 50 == 0:  # an exact copy of an earlier chat (kept, not line 2), shouting
            original = chats[rng.choice([i for i in range(2, n - 1) if i + 1 not in planted])]
            copy = [{**m, "content": m["content"].upper()} for m in original["messages"]]
            chats.append({"messages": copy})
            planted[n] = "exact_duplicate"
        elif n % 50 == 25:  # an earlier answer with one word changed
            original = chats[-3]
            *prompt, last = original["messages"]
            words = last["content"].split()
            words[3] = "zebra"
            chats.append({"messages": [*prompt, {**last, "content": " ".join(words)}]})
            planted[n] = "near_duplicate"
        elif n % 100 == 13:
            chats.append(_chat("Hi", "ok"))
            planted[n] = "too_short"
        else:
            question = _sentence(rng, 12)
            if n % 10 == 3:  # personal data, scrubbed before anything is stored
                question += f" Write to me at person{n}@example.com please."
            chat = _chat(question, _sentence(rng, 20), system="Be brief." if n % 7 == 0 else None)
            if n % 9 == 0:  # a multi-turn chat; the first answer not to be learned
                first = {"role": "assistant", "content": _sentence(rng, 8), "weight": 0}
                chat["messages"] = [
                    {"role": "user", "content": _sentence(rng, 6)},
                    first,
                    *chat["messages"],
                ]
            chats.append(chat)
    # The same question as line 2, answered otherwise: flagged for review.
    chats[998] = _chat(chats[1]["messages"][0]["content"], _sentence(rng, 20))
    planted[999] = "conflicting_answer"
    return chats, planted


def _scrubbed(chat: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{**m, "content": scrub(m["content"]).text} for m in chat["messages"]]}


def test_a_thousand_conversations_import_curate_and_export_back(client: TestClient) -> None:
    chats, planted = _thousand(random.Random(30))
    response = client.post(
        "/api/examples", content=_jsonl(chats), headers=JSONL, params={"filename": "mine.jsonl"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert {item["line"]: item["reason"] for item in body["not_kept"]} == planted
    assert body["flagged"] == 1 and body["rejected"] == len(planted) - 1
    assert body["kept"] == 1000 - len(planted)
    assert body["reasons"] == {
        "conflicting_answer": 1,
        "exact_duplicate": 20,
        "near_duplicate": 20,
        "too_short": 10,
    }
    emails = sum("@example.com" in json.dumps(chat).lower() for chat in chats)
    assert body["scrubbed"] == {"email": emails}
    for item in body["not_kept"]:
        if item["reason"] == "exact_duplicate":
            assert item["detail"].startswith("of line ")

    # The round trip: the same conversations, scrubbed, less the ones not kept, in order.
    kept = [_scrubbed(c) for n, c in enumerate(chats, start=1) if n not in planted]
    assert _export(client) == kept

    rows = _stored(client)
    assert [row.id for row in rows] == body["ids"]
    assert all("@example.com" not in json.dumps(row.messages).lower() for row in rows)
    assert sum("[EMAIL]" in json.dumps(row.messages) for row in rows) == emails
    by_line = {row.provenance["line"]: row for row in rows if row.provenance}
    assert by_line[50].state == "rejected" and not by_line[50].active
    assert by_line[50].reason == "exact_duplicate"
    assert by_line[999].state == "flagged" and not by_line[999].active
    assert by_line[1].provenance == {
        "importer": "api",
        "format": "jsonl",
        "file": "mine.jsonl",
        "line": 1,
        "sha256": by_line[1].provenance["sha256"],
    }
    assert by_line[9].provenance["weights"] == {"1": 0}
    assert {row.user_id for row in rows} == {"anonymous"}

    # Sent again: every one repeats an example kept before.
    again = client.post("/api/examples", content=_jsonl(chats[:5]), headers=JSONL).json()
    assert again["kept"] == 0 and again["reasons"] == {"exact_duplicate": 5}
    assert again["not_kept"][0]["detail"].startswith("of example ")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": "hi", "completion": "there"}', "prompt/completion pair"),
        ('{"conversation": []}', "unknown field"),
        ("[1, 2]", "not a conversation"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "messages[0].role is 'tool'"),
        ('{"messages": [{"role": "user", "content": "Is it on?"}]}', "must be the assistant's"),
        ('{"messages": [{"role": "user", "content": ["a"]}]}', "must be text"),
        (
            '{"messages": [{"role": "user", "content": "Hi there"}, '
            '{"role": "assistant", "content": "Hello", "weight": 0}]}',
            "weight 0",
        ),
        ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "must be text"),
    ],
)
def test_a_bad_line_refuses_the_upload_and_stores_nothing(
    client: TestClient, line: str, words: str
) -> None:
    good = json.dumps(_chat("What colour is the sky?", "Blue, on a clear day at noon."))
    body = f"{good}\n\n{line}\n{good}\n".encode()
    response = client.post("/api/examples", content=body, headers=JSONL)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith("line 3: ") and words in error["message"], error
    assert error["code"] == "invalid_example"
    assert _stored(client) == []


def test_json_bodies_and_content_types(client: TestClient) -> None:
    chats = [_chat("Name a red fruit.", "A strawberry."), _chat("Name a sour fruit.", "A lemon.")]
    listed = client.post("/api/examples", json={"examples": chats})
    assert listed.status_code == 200 and listed.json()["kept"] == 2
    bad = client.post("/api/examples", json={"examples": [chats[0], {"messages": "hi"}]})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"].startswith("examples[1]: ")
    for body in ({}, {"messages": chats[0]["messages"], "user": "x"}):
        assert client.post("/api/examples", json=body).status_code == 400
    ndjson = {"Content-Type": "application/x-ndjson"}
    assert client.post("/api/examples", content=_jsonl(chats), headers=ndjson).status_code == 200
    plain = client.post(
        "/api/examples", content=_jsonl(chats), headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415 and "application/jsonl" in plain.json()["error"]["message"]
    # JSONL is taken on this route only.
    other = client.post("/api/feedback", content=_jsonl(chats), headers=JSONL)
    assert other.status_code == 415
    assert len(_stored(client)) == 4


def test_pages_follow_one_another(client: TestClient) -> None:
    rng = random.Random(1)
    chats = [_chat(_sentence(rng, 10), _sentence(rng, 12)) for _ in range(5)]
    ids = client.post("/api/examples", content=_jsonl(chats), headers=JSONL).json()["ids"]
    seen, after, pages = [], 0, 0
    while True:
        page = client.get("/api/examples", params={"limit": 2, "after": after}).json()
        seen += [item["id"] for item in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids and pages == 3
    assert client.get("/api/examples", params={"state": "rejected"}).json()["data"] == []
    assert len(client.get("/api/examples", params={"source": "submitted"}).json()["data"]) == 5
    assert client.get("/api/examples", params={"source": "rating"}).json()["data"] == []
    assert client.get("/api/examples", params={"limit": 0}).status_code == 400


@pytest.fixture
def secured(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[TestClient]:
    settings = tiny_settings(tiny_model_dir, serve={"auth_required": True})
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        yield client


def test_each_user_sees_and_exports_only_their_own(secured: TestClient) -> None:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    alice, bob, admin = (
        {"Authorization": f"Bearer {create_key(db, name, admin=name == 'root')}"}
        for name in ("alice", "bob", "root")
    )
    chat = _chat("What is my locker code?", "Your locker code is written in the blue notebook.")
    # The key says who submits; a declared user does not.
    sent = secured.post("/api/examples", json=chat, headers=alice, params={"user": "bob"})
    assert sent.status_code == 200 and sent.json()["kept"] == 1
    assert [row.user_id for row in _stored(secured)] == ["alice"]

    for params in ({}, {"user": "alice"}):
        assert secured.get("/api/examples", headers=bob, params=params).json()["data"] == []
        assert secured.get("/api/examples/export", headers=bob, params=params).text == ""
    assert len(secured.get("/api/examples", headers=alice).json()["data"]) == 1
    exported = secured.get("/api/examples/export", headers=alice)
    assert [json.loads(line) for line in exported.text.splitlines()] == [chat]

    # Deduplication is per owner: Bob's copy is his to train on, and tells him nothing of Alice.
    copied = secured.post("/api/examples", json=chat, headers=bob).json()
    assert copied["kept"] == 1
    everyone = secured.get("/api/examples", headers=admin).json()["data"]
    assert [item["user"] for item in everyone] == ["alice", "bob"]
    only = secured.get("/api/examples", headers=admin, params={"user": "alice"}).json()["data"]
    assert [item["user"] for item in only] == ["alice"]
    assert len(secured.get("/api/examples/export", headers=admin).text.splitlines()) == 2


def test_the_store_counts_match_what_was_answered(client: TestClient) -> None:
    """Nothing half-stored: a refused body after a good one leaves exactly the good one."""
    good = client.post("/api/examples", json=_chat("Capital of Peru?", "Lima is the capital."))
    assert good.status_code == 200
    assert client.post("/api/examples", content=b"\xff\xfe\n", headers=JSONL).status_code == 400
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(TrainingExample)) == 1


def test_an_upload_past_the_size_limit_is_413_and_stores_nothing(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    settings = tiny_settings(tiny_model_dir, serve={"max_request_bytes": 1024})
    rng = random.Random(2)
    chats = [_chat(_sentence(rng, 10), _sentence(rng, 12)) for _ in range(20)]
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        response = client.post("/api/examples", content=_jsonl(chats), headers=JSONL)
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"
        assert _stored(client) == []
