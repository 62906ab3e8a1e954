"""A full disk or a read-only store: a clear error, nothing acknowledged that was not stored,
and an intact store that works again once the fault is gone.

The tests may run as root, where chmod does not stop writes, so the faults come from SQLite
itself: ``PRAGMA query_only`` makes every write fail as a read-only database does ("attempt to
write a readonly database"), and a full disk is SQLite's own error raised by the driver when an
INSERT reaches it (what ``SQLITE_FULL`` looks like to the server).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from selftune.store.db import Database
from selftune.store.schema import Feedback, Interaction

CHAT = {"model": "selftune", "messages": [{"role": "user", "content": "Hello there"}]}


def _db(client: TestClient) -> Database:
    db: Database = client.app.state.selftune.db  # type: ignore[attr-defined]
    return db


def _count(db: Database, table: Any) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def _integrity(db: Database) -> str:
    connection = sqlite3.connect(db.url.removeprefix("sqlite:///"))
    try:
        return ", ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


@contextlib.contextmanager
def _read_only(db: Database) -> Iterator[None]:
    def query_only(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only = ON")

    event.listen(db.engine, "connect", query_only)
    db.engine.dispose()  # new connections, each read-only
    try:
        yield
    finally:
        event.remove(db.engine, "connect", query_only)
        db.engine.dispose()


@contextlib.contextmanager
def _disk_full(db: Database) -> Iterator[None]:
    def full(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(db.engine, "before_cursor_execute", full)
    try:
        yield
    finally:
        event.remove(db.engine, "before_cursor_execute", full)


def _works_again(client: TestClient, db: Database, before: int) -> None:
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    assert _count(db, Interaction) == before + 1
    with db.read() as session:
        stored = session.get(Interaction, response.json()["id"])
    assert stored is not None
    assert stored.response == response.json()["choices"][0]["message"]["content"]
    assert _integrity(db) == "ok"


def test_a_full_disk_answers_507_saying_so_and_stores_nothing(client: TestClient) -> None:
    db = _db(client)
    answered = client.post("/v1/chat/completions", json=CHAT).json()["id"]
    before = _count(db, Interaction)
    with _disk_full(db):
        response = client.post("/v1/chat/completions", json=CHAT)
        rated = client.post("/api/feedback", json={"interaction_id": answered, "rating": 1})
        streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "storage_full")
    assert "disk is full" in error["message"]
    assert "Free disk space" in error["message"]
    assert "Traceback" not in response.text
    # Streamed, the status is sent before the answer is recorded: an error event, no [DONE].
    assert '"code": "storage_full"' in streamed and "Free disk space" in streamed
    assert "[DONE]" not in streamed and "INSERT" not in streamed
    assert rated.status_code == 507
    assert rated.json()["error"]["code"] == "storage_full"
    assert _count(db, Interaction) == before
    assert _count(db, Feedback) == 0
    assert _integrity(db) == "ok"
    _works_again(client, db, before)


def test_a_read_only_store_answers_503_naming_the_data_folder(client: TestClient) -> None:
    db = _db(client)
    client.post("/v1/chat/completions", json=CHAT)
    before = _count(db, Interaction)
    with _read_only(db):
        response = client.post("/v1/chat/completions", json=CHAT)
        assert client.get("/health").status_code == 200  # reading still works
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "storage_read_only")
    assert "readonly database" in error["message"]
    data_dir = str(client.app.state.selftune.settings.data_dir)  # type: ignore[attr-defined]
    assert data_dir in error["message"]
    assert "writable" in error["message"]
    assert _count(db, Interaction) == before
    assert _integrity(db) == "ok"
    _works_again(client, db, before)


@pytest.mark.parametrize(
    ("driver_message", "status", "code"),
    [
        ("database or disk is full", 507, "storage_full"),
        ('could not extend file "base/16384/2619": No space left on device', 507, "storage_full"),
        ("attempt to write a readonly database", 503, "storage_read_only"),
        ("permission denied for table interactions", 503, "storage_read_only"),
        ("database is locked", 503, "storage_unavailable"),
    ],
)
def test_storage_errors_say_what_is_wrong(driver_message: str, status: int, code: str) -> None:
    from sqlalchemy.exc import OperationalError

    from selftune.api.errors import storage_error

    exc = OperationalError("INSERT INTO interactions ...", {}, Exception(driver_message))
    error = storage_error(exc, "/srv/selftune")
    assert (error.status, error.code) == (status, code)
    assert driver_message in error.message and "INSERT" not in error.message
    assert "nothing of it was recorded" in error.message.lower()
