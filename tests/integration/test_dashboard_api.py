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
from selftune.store.schema import Version
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import add_version

CHAT = [{"role": "user", "content": "hi"}]
YOUTUBE_KEY = "AIza-not-for-your-eyes"


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
        tiny_model_dir,
        serve={"auth_required": True, "auth_failures_per_minute": 0},
        youtube={"api_key": YOUTUBE_KEY},  # a secret GET /api/settings must not show
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


def test_an_admins_key_sees_and_acts_on_every_users_jobs(secured: TestClient) -> None:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    alice, bob = _bearer(create_key(db, "alice")), _bearer(create_key(db, "bob"))
    admin = _bearer(create_key(db, "ops", admin=True))
    alices_job = jobs.enqueue(db, "train", "alice")
    bobs_job = jobs.enqueue(db, "train", "bob")

    def listed(headers: dict[str, str], **params: str) -> list[tuple[int, str]]:
        page = secured.get("/api/jobs", params=params, headers=headers)
        assert page.status_code == 200, page.text
        return [(job["job_id"], job["user"]) for job in page.json()["data"]]

    assert listed(admin) == [(bobs_job, "bob"), (alices_job, "alice")]
    assert listed(admin, user="alice") == [(alices_job, "alice")]
    assert listed(alice) == [(alices_job, "alice")]
    assert listed(alice, user="bob") == []  # naming another user reads nothing
    assert secured.get(f"/api/jobs/{bobs_job}", headers=alice).status_code == 404
    assert secured.get(f"/api/jobs/{bobs_job}", headers=admin).json()["user"] == "bob"
    # What an admin's key sees, it may act on: cancel bob's job, then retry it.
    assert secured.post(f"/api/jobs/{bobs_job}/cancel", headers=alice).status_code == 404
    cancelled = secured.post(f"/api/jobs/{bobs_job}/cancel", headers=admin)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    retried = secured.post(f"/api/jobs/{bobs_job}/retry", headers=admin)
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    again = secured.post(f"/api/jobs/{bobs_job}/retry", headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_conflict"
    assert bob  # bob's own key was never needed


def _add_versions(db: Any, count: int) -> list[int]:
    """``count`` bare version rows (no files): enough for listing them."""
    with db.write() as session:
        rows = [
            Version(
                name=f"p{i}",
                base_model="tiny",
                base_fingerprint="f" * 16,
                path=f"/nowhere/p{i}",
                chat_template="",
                gate={"passed": True, "reason": "test fixture"},
            )
            for i in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def test_versions_are_paged_newest_first(client: TestClient) -> None:
    ids = _add_versions(client.app.state.selftune.db, 5)  # type: ignore[attr-defined]
    whole = client.get("/api/versions").json()  # no paging asked: all, oldest first, as before
    assert [v["id"] for v in whole["data"]] == ids
    assert (whole["total"], whole["next"], whole["serving"]) == (5, None, "base")

    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = client.get("/api/versions", params=params).json()
        assert page["total"] == 5
        seen += [v["id"] for v in page["data"]]
        if page["next"] is None:
            break
        params["before"] = page["next"]
    assert seen == ids[::-1]
    one = client.get("/api/versions", params={"before": ids[2] + 1, "limit": 1}).json()
    assert [v["name"] for v in one["data"]] == ["p2"]  # one version by its id
    assert client.get("/api/versions", params={"limit": 0}).status_code == 400


def test_settings_are_an_admins_with_secrets_hidden(secured: TestClient) -> None:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    alice = _bearer(create_key(db, "alice"))
    admin = _bearer(create_key(db, "ops", admin=True))
    refused = secured.get("/api/settings", headers=alice)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_key_required"
    assert refused.json()["error"]["type"] == "permission_error"
    assert secured.get("/api/settings").status_code == 401

    answer = secured.get("/api/settings", headers=admin)
    assert answer.status_code == 200, answer.text
    assert YOUTUBE_KEY not in answer.text
    settings = {item["name"]: item for item in answer.json()["data"]}
    assert settings["serve.auth_required"]["value"] is True
    assert settings["youtube.api_key"] == {
        "name": "youtube.api_key",
        "value": "********",
        "description": settings["youtube.api_key"]["description"],
        "redacted": True,
    }
    assert settings["proxy.upstream_api_key"]["value"] == ""  # not set: nothing to hide
    assert settings["serve.default_max_tokens"] == {
        **settings["serve.default_max_tokens"],
        "value": 8,
        "redacted": False,
    }
