"""With auth_required, keys identify users and no user reaches another's records."""

from __future__ import annotations

import datetime as dt
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
from selftune.store.schema import ApiKey, Interaction, as_utc
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


# --- key lifetimes and management ------------------------------------------------------------
def _db(client: TestClient) -> Any:
    return client.app.state.selftune.db  # type: ignore[attr-defined]


def _prefix(headers: dict[str, str]) -> str:
    return headers["Authorization"].split()[1][: auth.PREFIX_LENGTH]


def test_an_expired_key_is_refused_and_says_how_to_get_another(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, _, _ = secured
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    expired = {"Authorization": f"Bearer {create_key(_db(client), 'carol', expires_at=past)}"}
    refused = client.get("/v1/models", headers=expired)
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert "expired" in error["message"] and "selftune keys create" in error["message"]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    valid = {"Authorization": f"Bearer {create_key(_db(client), 'carol', expires_at=later)}"}
    assert client.get("/v1/models", headers=valid).status_code == 200


def test_an_open_server_takes_an_expired_key_as_none(client: TestClient) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    expired = {"Authorization": f"Bearer {create_key(_db(client), 'alice', expires_at=past)}"}
    body = client.post("/v1/chat/completions", json={**CHAT, "user": "bob"}, headers=expired)
    assert _recorded_user(client, body.json()["id"]) == "bob"


def test_last_used_is_written_at_most_once_a_minute(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, alice, _ = secured

    def last_used() -> dt.datetime | None:
        with _db(client).read() as session:
            return session.scalar(select(ApiKey.last_used_at).where(ApiKey.user_id == "alice"))

    assert last_used() is None
    client.get("/v1/models", headers=alice)
    first = last_used()
    assert first is not None
    client.get("/v1/models", headers=alice)
    assert last_used() == first  # within the minute: not written again
    with _db(client).write() as session:  # a minute later
        key = session.scalars(select(ApiKey).where(ApiKey.user_id == "alice")).one()
        key.last_used_at = first - dt.timedelta(minutes=2)
    client.get("/v1/models", headers=alice)
    assert as_utc(last_used()) > as_utc(first) - dt.timedelta(seconds=1)  # type: ignore[arg-type]


def test_keys_are_listed_by_prefix_and_never_shown_again(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, alice, _ = secured
    admin = {"Authorization": f"Bearer {create_key(_db(client), 'ops', admin=True)}"}
    everyone = client.get("/api/keys", headers=admin).json()["data"]
    assert {k["user"] for k in everyone} == {"alice", "bob", "ops"}
    assert all(k["status"] == "active" and len(k["prefix"]) == 12 for k in everyone)
    listed = client.get("/api/keys", headers=alice)
    assert [k["prefix"] for k in listed.json()["data"]] == [_prefix(alice)]
    key = alice["Authorization"].split()[1]
    assert key not in listed.text and hash_key(key) not in listed.text
    assert client.get("/api/keys?user=bob", headers=alice).json()["data"] == []
    assert len(client.get("/api/keys?user=bob", headers=admin).json()["data"]) == 1


def test_admins_create_rotate_and_revoke_keys(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, alice, bob = secured
    admin = {"Authorization": f"Bearer {create_key(_db(client), 'ops', admin=True)}"}
    made = client.post(
        "/api/keys", json={"user": "dana", "name": "laptop", "expires_in_days": 30}, headers=admin
    )
    assert made.status_code == 201, made.text
    dana = {"Authorization": f"Bearer {made.json()['key']}"}
    assert made.json()["name"] == "laptop" and made.json()["expires_at"]
    assert client.get("/v1/models", headers=dana).status_code == 200
    refused = client.post("/api/keys", json={"user": "alice", "admin": True}, headers=alice)
    assert refused.status_code == 403

    # Rotation: the new key has the old one's owner, name and lifetime; the old one has grace.
    rotated = client.post(f"/api/keys/{_prefix(dana)}/rotate", json={}, headers=admin)
    assert rotated.status_code == 201, rotated.text
    new = {"Authorization": f"Bearer {rotated.json()['key']}"}
    assert rotated.json()["user"] == "dana" and rotated.json()["name"] == "laptop"
    assert client.get("/v1/models", headers=new).status_code == 200
    assert client.get("/v1/models", headers=dana).status_code == 200  # within its grace
    again = client.post(
        f"/api/keys/{_prefix(new)}/rotate", json={"grace_minutes": 0}, headers=admin
    )
    assert client.get("/v1/models", headers=new).status_code == 401  # no grace: expired
    newest = {"Authorization": f"Bearer {again.json()['key']}"}
    assert client.get("/v1/models", headers=newest).status_code == 200

    # Revoking: any key with an admin's key, one's own with a user's, no one else's.
    assert client.delete(f"/api/keys/{_prefix(bob)}", headers=alice).status_code == 404
    assert client.delete(f"/api/keys/{_prefix(alice)}", headers=alice).json()["status"] == (
        "revoked"
    )
    assert client.get("/v1/models", headers=alice).status_code == 401
    assert client.delete(f"/api/keys/{_prefix(bob)}", headers=admin).status_code == 200
    assert client.get("/v1/models", headers=bob).status_code == 401


def test_a_prefix_that_names_several_keys_is_refused(
    secured: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, _, _ = secured
    admin = {"Authorization": f"Bearer {create_key(_db(client), 'ops', admin=True)}"}
    with _db(client).write() as session:  # two keys from when prefixes had 8 characters
        for n in (1, 2):
            session.add(ApiKey(user_id="ops", key_hash=f"{n}" * 64, prefix="st-SAME_"))
    clash = client.delete("/api/keys/st-SAME_", headers=admin)
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "ambiguous_key_prefix"
    assert client.delete("/api/keys/st-SAM", headers=admin).status_code == 400  # too short
    # "_" is a wildcard in SQL's LIKE; here it is only a character.
    assert client.delete("/api/keys/st-SAM__", headers=admin).status_code == 404


# --- failed attempts --------------------------------------------------------------------------
def test_failed_attempts_are_limited_per_address(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> None:
    settings = tiny_settings(
        tiny_model_dir, serve={"auth_required": True, "auth_failures_per_minute": 3}
    )
    app = create_app(settings, engine=tiny_engine)
    alice = {"Authorization": f"Bearer {create_key(app.state.selftune.db, 'alice')}"}
    wrong = {"Authorization": "Bearer st-guess"}
    with TestClient(app, client=("203.0.113.7", 5000)) as guesser:
        for _ in range(3):
            assert guesser.get("/v1/models", headers=wrong).status_code == 401
        assert guesser.get("/v1/models").status_code == 401  # no key: not a guess
        blocked = guesser.get("/v1/models", headers=wrong)
        assert blocked.status_code == 429
        assert blocked.json()["error"]["code"] == "too_many_invalid_keys"
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        # Even a right key waits: else guessing would go on at full speed.
        assert guesser.get("/v1/models", headers=alice).status_code == 429
        with TestClient(app, client=("198.51.100.2", 5000)) as other:
            assert other.get("/v1/models", headers=alice).status_code == 200


def test_failed_attempts_leave_the_window_after_a_minute() -> None:
    now = [1000.0]
    attempts = auth.FailedAttempts(2, clock=lambda: now[0])
    attempts.record("a")
    now[0] += 30
    attempts.record("a")
    assert attempts.retry_after("a") == 30 and attempts.retry_after("b") is None
    now[0] += 30
    assert attempts.retry_after("a") is None  # the first failure is a minute old
    assert auth.FailedAttempts(0).retry_after("a") is None  # 0: no limit
