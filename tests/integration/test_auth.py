"""With auth_required, keys identify users and no user reaches another's records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from selftune.api import auth
from selftune.api.app import create_app
from selftune.api.auth import create_key, hash_key, revoke_keys
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import ApiKey, Interaction
from tests.integration.conftest import tiny_settings

CHAT = {"model": "selftune", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def secured(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    settings = tiny_settings(tiny_model_dir, serve={"auth_required": True})
    app = create_app(settings, engine=tiny_engine)
    db = app.state.selftune.db
    alice = {"Authorization": f"Bearer {create_key(db, 'alice')}"}
    bob = {"Authorization": f"Bearer {create_key(db, 'bob')}"}
    with TestClient(app) as client:
        yield client, alice, bob


def test_keys_are_required_and_stored_hashed(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, alice, _ = secured
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    key = alice["Authorization"].split()[1]
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert hash_key(key) in stored and key not in stored


def test_the_key_owner_is_the_recorded_user(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, alice, _ = secured
    body = client.post(
        "/v1/chat/completions", json={**CHAT, "user": "mallory"}, headers=alice
    ).json()
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        assert session.get(Interaction, body["id"]).user_id == "alice"  # type: ignore[union-attr]


def test_users_cannot_touch_each_others_records(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, alice, bob = secured
    interaction = client.post("/v1/chat/completions", json=CHAT, headers=alice).json()["id"]
    feedback = {"interaction_id": interaction, "rating": -1, "correction": "Hello!"}
    stolen = client.post("/api/feedback", json=feedback, headers=bob)
    assert stolen.status_code == 404  # bob cannot even learn that the id exists
    assert client.post("/api/feedback", json=feedback, headers=alice).status_code == 200

    job = client.post("/api/train", json={}, headers=alice).json()["job_id"]
    assert client.get(f"/api/jobs/{job}", headers=bob).status_code == 404
    assert client.get("/api/jobs", headers=bob).json()["data"] == []
    assert client.get(f"/api/jobs/{job}", headers=alice).json()["status"] == "queued"


def test_revoked_keys_stop_working(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, alice, _ = secured
    assert client.get("/v1/models", headers=alice).status_code == 200
    revoke_keys(client.app.state.selftune.db, "alice")  # type: ignore[attr-defined]
    assert client.get("/v1/models", headers=alice).status_code == 401


def test_feedback_validation(secured: tuple[TestClient, dict[str, str], dict[str, str]]) -> None:
    client, alice, _ = secured
    interaction = client.post("/v1/chat/completions", json=CHAT, headers=alice).json()["id"]
    for bad in (
        {"interaction_id": interaction, "rating": 5},
        {"interaction_id": interaction, "rating": 1, "correction": ""},
        {"interaction_id": interaction},
    ):
        response = client.post("/api/feedback", json=bad, headers=alice)
        assert response.status_code == 400, bad
        assert response.json()["error"]["type"] == "invalid_request_error"
    missing = client.post(
        "/api/feedback", json={"interaction_id": "chatcmpl-x", "rating": 1}, headers=alice
    )
    assert missing.status_code == 404


# Each changes what every user is served; an admin key passes on to the route's own checks.
SHARED_CHANGES = [
    ("/api/rollback", {}, 409),  # nothing to roll back
    ("/api/versions/v9/promote", {}, 404),  # no such version
    ("/lora-adapters", [], 200),  # the base, already served
    ("/v1/load_lora_adapter", {"lora_name": "mine", "lora_path": "/nonexistent"}, 400),
    ("/v1/unload_lora_adapter", {"lora_name": "mine"}, 404),
]


@pytest.mark.parametrize(("path", "body", "admin_status"), SHARED_CHANGES)
def test_changing_what_everyone_is_served_needs_an_admin_key(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
    path: str,
    body: object,
    admin_status: int,
) -> None:
    client, alice, _ = secured
    refused = client.post(path, json=body, headers=alice)
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "admin_key_required")
    assert "selftune keys create --user NAME --admin" in error["message"]

    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    operator = {"Authorization": f"Bearer {create_key(db, 'operator', admin=True)}"}
    allowed = client.post(path, json=body, headers=operator)
    assert allowed.status_code == admin_status, allowed.text


def test_an_open_server_trusts_every_local_caller_with_the_served_model(
    client: TestClient,
) -> None:
    """Without auth_required a key only names its owner: omitting it would do the same."""
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    user_key = {"Authorization": f"Bearer {create_key(db, 'alice')}"}
    assert client.post("/api/rollback", json={}, headers=user_key).status_code == 409
    assert client.post("/api/rollback", json={}).status_code == 409


def _recorded_user(client: TestClient, interaction_id: str) -> str:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    with db.read() as session:
        row = session.get(Interaction, interaction_id)
    assert row is not None
    return row.user_id


PLACEHOLDERS = ["Bearer sk-no-key-required", "Bearer x", "Bearer dummy", "Bearer ", "Basic eDp5"]


@pytest.mark.parametrize("authorization", PLACEHOLDERS)
def test_an_open_server_takes_a_key_it_does_not_know_as_none(
    client: TestClient, authorization: str
) -> None:
    """Clients insist on sending a key (the openai library, llama.cpp's own examples); on an
    open server one it did not issue names nobody: the user field does, else anonymous."""
    headers = {"Authorization": authorization}
    named = client.post("/v1/chat/completions", json={**CHAT, "user": "bob"}, headers=headers)
    assert named.status_code == 200, named.text
    assert _recorded_user(client, named.json()["id"]) == "bob"
    unnamed = client.post("/v1/chat/completions", json=CHAT, headers=headers).json()
    assert _recorded_user(client, unnamed["id"]) == "anonymous"
    # Every caller of an open server is trusted, with or without a key.
    assert client.post("/api/rollback", json={}, headers=headers).status_code == 409


def test_an_open_server_still_knows_the_keys_it_issued(client: TestClient) -> None:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    alice = {"Authorization": f"Bearer {create_key(db, 'alice')}"}
    body = client.post("/v1/chat/completions", json={**CHAT, "user": "mallory"}, headers=alice)
    assert _recorded_user(client, body.json()["id"]) == "alice"
    revoke_keys(db, "alice")  # a revoked key is a key it does not know
    body = client.post("/v1/chat/completions", json={**CHAT, "user": "mallory"}, headers=alice)
    assert _recorded_user(client, body.json()["id"]) == "mallory"


def test_placeholders_are_refused_where_keys_are_required(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, _, _ = secured
    for authorization in PLACEHOLDERS:
        refused = client.get("/v1/models", headers={"Authorization": authorization})
        assert refused.status_code == 401, authorization
        assert refused.json()["error"]["code"] == "invalid_api_key"


def test_a_request_without_a_key_reads_nothing_from_the_store(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common case stays on the event loop: only a key sends the caller to a thread."""
    hops: list[str | None] = []
    hop = auth.run_in_threadpool

    async def counted(func: Any, db: Any, authorization: str | None, required: bool) -> Any:
        hops.append(authorization)
        return await hop(func, db, authorization, required)

    monkeypatch.setattr(auth, "run_in_threadpool", counted)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert hops == []
    keyed = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer x"})
    assert keyed.status_code == 200 and hops == ["Bearer x"]
