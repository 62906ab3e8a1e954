"""The routes the dashboard reads: who the caller is, the recorded interactions (paged, each
user's own), the event timeline, and its live stream with the cookie that authorizes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api import dashboard_stream
from selftune.api.app import create_app
from selftune.api.auth import Caller, create_key
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store import jobs
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import add_version

CHAT = [{"role": "user", "content": "hi"}]


def _ask(client: TestClient, text: str, headers: dict[str, str] | None = None) -> str:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 2}
    answer = client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert answer.status_code == 200, answer.text
    interaction: str = answer.json()["id"]
    return interaction


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event in ``text``."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            found.append((fields.get("event", "message"), json.loads(fields["data"])))
    return found


@pytest.fixture
def secured(
    settings_env: Path, tiny_model_dir: Path, adapter_engine: TransformersEngine
) -> Iterator[TestClient]:
    """Keys required; the module's own engine, as a test here promotes a version (adapters
    loaded into the session's engine would be taken for other modules' "v1")."""
    settings = tiny_settings(
        tiny_model_dir, serve={"auth_required": True, "auth_failures_per_minute": 0}
    )
    with TestClient(create_app(settings, engine=adapter_engine)) as client:
        yield client


def test_me_says_who_calls_and_what_it_may_do(client: TestClient, secured: TestClient) -> None:
    open_me = client.get("/api/me").json()
    assert open_me == {
        "user": None,
        "authenticated": False,
        "admin": True,  # an open server trusts its local callers
        "auth_required": False,
        "memory": False,
        "serving": "base",
        "last_event": 0,
    }
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    alice = secured.get("/api/me", headers=_bearer(create_key(db, "alice"))).json()
    assert (alice["user"], alice["authenticated"], alice["admin"]) == ("alice", True, False)
    ops = secured.get("/api/me", headers=_bearer(create_key(db, "ops", admin=True))).json()
    assert (ops["user"], ops["admin"], ops["auth_required"]) == ("ops", True, True)
    assert secured.get("/api/me").status_code == 401


def test_interactions_are_paged_newest_first(client: TestClient) -> None:
    asked = [_ask(client, f"question {i}") for i in range(5)]
    seen: list[str] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if before:
            params["before"] = before
        page = client.get("/api/interactions", params=params).json()
        seen += [item["id"] for item in page["data"]]
        before = page["next"]
        if before is None:
            break
    assert seen == asked[::-1]
    first = client.get("/api/interactions", params={"limit": 1}).json()["data"][0]
    assert first["question"] == "question 4" and first["version"] == "base"
    assert first["rating"] is None and not first["corrected"] and not first["memory"]

    rating = {"interaction_id": asked[4], "rating": -1, "correction": "Answer four."}
    assert client.post("/api/feedback", json=rating).status_code == 200
    detail = client.get(f"/api/interactions/{asked[4]}").json()
    assert detail["messages"] == [{"role": "user", "content": "question 4"}]
    assert [(f["rating"], f["correction"]) for f in detail["feedback"]] == [(-1, "Answer four.")]
    listed = client.get("/api/interactions", params={"limit": 1}).json()["data"][0]
    assert (listed["rating"], listed["corrected"]) == (-1, True)

    missing = client.get("/api/interactions/chatcmpl-nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "interaction_not_found"
    bad_page = client.get("/api/interactions", params={"before": "chatcmpl-nothing"})
    assert bad_page.status_code == 400 and bad_page.json()["error"]["param"] == "before"


def test_a_users_key_reads_only_its_own_interactions(secured: TestClient) -> None:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    alice, bob = _bearer(create_key(db, "alice")), _bearer(create_key(db, "bob"))
    admin = _bearer(create_key(db, "ops", admin=True))
    mine = _ask(secured, "alice's question", alice)
    theirs = _ask(secured, "bob's question", bob)

    def listed(headers: dict[str, str], **params: str) -> list[str]:
        page = secured.get("/api/interactions", params=params, headers=headers)
        assert page.status_code == 200, page.text
        return [item["id"] for item in page.json()["data"]]

    assert listed(alice) == [mine]
    assert listed(alice, user="bob") == []  # naming another user reads nothing
    assert secured.get(f"/api/interactions/{theirs}", headers=alice).status_code == 404
    assert (
        secured.get("/api/interactions", params={"before": theirs}, headers=alice).status_code
        == 400
    )
    assert sorted(listed(admin)) == sorted([mine, theirs])
    assert listed(admin, user="bob") == [theirs]
    assert secured.get(f"/api/interactions/{theirs}", headers=admin).status_code == 200


def test_events_show_a_user_its_own_jobs_and_what_everyone_is_served(
    secured: TestClient, lora: Path
) -> None:
    state = secured.app.state.selftune  # type: ignore[attr-defined]
    alice, bob = _bearer(create_key(state.db, "alice")), _bearer(create_key(state.db, "bob"))
    admin = _bearer(create_key(state.db, "ops", admin=True))
    alices_job = jobs.enqueue(state.db, "train", "alice")
    bobs_job = jobs.enqueue(state.db, "train", "bob")
    add_version(state.settings, state.db, lora, "v1")
    assert secured.post("/api/versions/v1/promote", headers=admin).status_code == 200

    def kinds(headers: dict[str, str], **params: Any) -> list[tuple[str, Any]]:
        page = secured.get("/api/events", params=params, headers=headers)
        assert page.status_code == 200, page.text
        return [(e["kind"], e["payload"].get("job_id")) for e in page.json()["data"]]

    assert kinds(alice) == [("promote", None), ("job_queued", alices_job)]
    assert kinds(bob) == [("promote", None), ("job_queued", bobs_job)]
    assert kinds(admin) == [
        ("promote", None),
        ("job_queued", bobs_job),
        ("job_queued", alices_job),
    ]
    promotion = secured.get("/api/events", headers=alice).json()["data"][0]
    assert promotion["payload"]["actor"] == "an admin"  # not the admin's name
    assert secured.get("/api/events", headers=admin).json()["data"][0]["payload"]["actor"] == "ops"
    assert kinds(admin, kind=["job_queued"]) == [
        ("job_queued", bobs_job),
        ("job_queued", alices_job),
    ]
    first = secured.get("/api/events", params={"limit": 1}, headers=admin).json()
    rest = secured.get("/api/events", params={"before": first["next"]}, headers=admin).json()
    assert [e["kind"] for e in rest["data"]] == ["job_queued", "job_queued"]
    assert rest["next"] is None
    assert secured.get("/api/me", headers=alice).json()["last_event"] == promotion["id"]


def test_the_stream_takes_a_cookie_in_place_of_the_key(secured: TestClient) -> None:
    state = secured.app.state.selftune  # type: ignore[attr-defined]
    alices_key = create_key(state.db, "alice")
    alice, bob = _bearer(alices_key), _bearer(create_key(state.db, "bob"))
    assert secured.get("/api/events/stream").status_code == 401
    assert secured.post("/api/events/token").status_code == 401

    token = secured.post("/api/events/token", headers=alice)
    assert token.status_code == 200 and token.json() == {"expires_in": 300}
    cookie = token.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Path=/api/events/stream" in cookie
    assert "samesite=strict" in cookie.lower()
    value = token.cookies[dashboard_stream.COOKIE]
    assert alices_key not in value and alices_key[3:] not in value  # a signed token, no key
    secured.cookies.clear()

    before = secured.get("/api/me", headers=alice).json()["last_event"]
    alices_job = jobs.enqueue(state.db, "train", "alice")
    jobs.enqueue(state.db, "train", "bob")
    sent = secured.get(
        "/api/events/stream",
        params={"after": before},
        cookies={dashboard_stream.COOKIE: value},
    )
    assert sent.status_code == 200, sent.text
    assert sent.headers["content-type"].startswith("text/event-stream")
    events = _events(sent.text)
    assert [(name, data["kind"]) for name, data in events if name == "store"] == [
        ("store", "job_queued")
    ]
    assert [data["job_id"] for name, data in events if name == "job"] == [alices_job]
    # A reconnecting EventSource says where it was: nothing new since.
    last = next(data["id"] for name, data in events if name == "store")
    again = secured.get(
        "/api/events/stream",
        headers={"Last-Event-ID": str(last)},
        cookies={dashboard_stream.COOKIE: value},
    )
    assert [name for name, _ in _events(again.text)] == ["job"]  # the job, still queued

    forged = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
    refused = secured.get("/api/events/stream", cookies={dashboard_stream.COOKIE: forged})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_stream_token"
    assert secured.get("/api/events/stream", headers=bob).status_code == 200  # a key works too


def test_a_stream_token_expires() -> None:
    caller = Caller("alice", True, admin=False)
    token = dashboard_stream.sign_token(caller, now=1000.0)
    assert dashboard_stream.read_token(token, now=1000.0 + 299) == caller
    assert dashboard_stream.read_token(token, now=1000.0 + 300) is None
    assert dashboard_stream.read_token("not.a-token") is None
    assert dashboard_stream.read_token("nodot") is None
