"""Channel summaries through the API and the worker, with the tiny model (its text is gibberish:
these tests look at what a summary covers, not at what it says): asked for, written by a
worker job, stale once the channel changes, per scope, and refreshed on the schedule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.config import Settings
from selftune.engines.transformers_engine import TransformersEngine
from selftune.memory.records import Scope, visible
from selftune.store.db import Database
from selftune.store.schema import Job, MemoryRecord, MemorySummary
from selftune.worker.loop import Worker
from tests.integration.conftest import run_jobs, tiny_settings


@pytest.fixture
def served(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[tuple[TestClient, Settings, dict[str, dict[str, str]]]]:
    settings = tiny_settings(
        tiny_model_dir, memory={"enabled": True}, serve={"auth_required": True}
    )
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        db = client.app.state.selftune.db  # type: ignore[attr-defined]
        keys = {
            name: {"Authorization": f"Bearer {create_key(db, name, admin=name == 'root')}"}
            for name in ("ann", "bob", "root")
        }
        yield client, settings, keys


def _note(client: TestClient, headers: dict[str, str], text: str, **body: Any) -> int:
    response = client.post(
        "/api/memory", json={"text": text, "tags": ["Garden"], **body}, headers=headers
    )
    assert response.status_code == 200, response.text
    note_id: int = response.json()["id"]
    return note_id


def _db(client: TestClient) -> Database:
    db: Database = client.app.state.selftune.db  # type: ignore[attr-defined]
    return db


def test_a_summary_is_asked_for_written_by_the_worker_and_goes_stale(
    served: tuple[TestClient, Settings, dict[str, dict[str, str]]],
) -> None:
    client, settings, keys = served
    ann, bob, root = keys["ann"], keys["bob"], keys["root"]
    own = [
        _note(client, ann, "Tomatoes need six hours of sun and deep watering twice a week."),
        _note(client, ann, "Basil grows well beside the tomatoes and keeps pests away."),
    ]
    secret = _note(client, bob, "Bob buries his spare house key under the garden gnome.")
    shared = _note(client, root, "The community garden opens at eight.", shared=True)

    missing = client.get("/api/memory/tags/garden/summary", headers=ann)
    assert missing.status_code == 404, missing.text
    error = missing.json()["error"]
    assert error["code"] == "summary_not_found"
    assert "POST /api/memory/tags/garden/summary" in error["message"]

    queued = client.post("/api/memory/tags/GARDEN/summary", headers=ann)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    again = client.post("/api/memory/tags/garden/summary", headers=ann)
    assert again.json() == {"job_id": job_id}  # the same channel and scope: the same job
    run_jobs(settings)
    job = client.get(f"/api/jobs/{job_id}", headers=ann).json()
    assert job["status"] == "succeeded", job

    view = client.get("/api/memory/tags/garden/summary", headers=ann)
    assert view.status_code == 200, view.text
    summary = view.json()
    assert summary["tag"] == "garden" and summary["records"] == 3
    assert summary["stale"] is False and summary["job_id"] == job_id
    assert summary["model"] == "base" and isinstance(summary["text"], str)
    with _db(client).read() as session:
        stored = session.scalars(select(MemorySummary)).one()
        ann_sees = set(session.scalars(select(MemoryRecord.id).where(visible(Scope("ann")))))
    assert set(stored.record_ids) == {*own, shared} and set(stored.record_ids) <= ann_sees
    assert secret not in stored.record_ids
    # Bob's view has no summary: ann's is not his to read.
    assert client.get("/api/memory/tags/garden/summary", headers=bob).status_code == 404

    _note(client, bob, "Bob's own bed of leeks.")  # not in ann's view
    assert client.get("/api/memory/tags/garden/summary", headers=ann).json()["stale"] is False
    _note(client, ann, "Marigolds at the border.")
    assert client.get("/api/memory/tags/garden/summary", headers=ann).json()["stale"] is True


def test_an_admin_summary_covers_every_record_and_an_empty_channel_fails_clearly(
    served: tuple[TestClient, Settings, dict[str, dict[str, str]]],
) -> None:
    client, settings, keys = served
    ids = [
        _note(client, keys["ann"], "Ann's raised beds."),
        _note(client, keys["bob"], "Bob's potatoes."),
    ]
    everyone = client.post("/api/memory/tags/garden/summary", headers=keys["root"]).json()
    empty = client.post("/api/memory/tags/orchard/summary", headers=keys["ann"]).json()
    run_jobs(settings)
    view = client.get("/api/memory/tags/garden/summary", headers=keys["root"]).json()
    assert view["records"] == 2 and view["job_id"] == everyone["job_id"]
    with _db(client).read() as session:
        stored = session.scalars(select(MemorySummary)).one()
    assert stored.scope == "all" and sorted(stored.record_ids) == ids
    failed = client.get(f"/api/jobs/{empty['job_id']}", headers=keys["ann"]).json()
    assert failed["status"] == "failed" and "holds no records" in failed["error"]
    # An admin naming a user reads that user's view, which has no summary yet.
    assert (
        client.get("/api/memory/tags/garden/summary?user=ann", headers=keys["root"]).status_code
        == 404
    )


def test_the_worker_queues_a_refresh_of_stale_summaries_on_its_schedule(
    served: tuple[TestClient, Settings, dict[str, dict[str, str]]],
) -> None:
    client, settings, keys = served
    _note(client, keys["ann"], "Ann's raised beds.")
    client.post("/api/memory/tags/garden/summary", headers=keys["ann"])
    run_jobs(settings)
    _note(client, keys["ann"], "Ann's new herb spiral.")

    def every(hours: float) -> Settings:
        memory = settings.memory.model_copy(update={"summary_interval_hours": hours})
        return settings.model_copy(update={"memory": memory})

    off = Worker(every(0))
    on = Worker(every(1.0))
    try:
        assert off._queue_stale_summaries() is False  # 0 hours: never
        assert on._queue_stale_summaries() is True
        assert on._queue_stale_summaries() is False  # not again before the hour is out
    finally:
        off.db.dispose()
        on.db.dispose()
    with _db(client).read() as session:
        jobs = session.scalars(select(Job).where(Job.kind == "memory_summary")).all()
    assert [j.status for j in jobs] == ["succeeded", "queued"]
    assert jobs[1].params == {"tag": "garden", "user_id": "ann", "everything": False}
    run_jobs(settings)
    view = client.get("/api/memory/tags/garden/summary", headers=keys["ann"]).json()
    assert view["records"] == 2 and view["stale"] is False and view["job_id"] == jobs[1].id


def test_a_tag_that_cannot_be_one_is_refused(
    served: tuple[TestClient, Settings, dict[str, dict[str, str]]],
) -> None:
    client, _, keys = served
    response = client.post(f"/api/memory/tags/{'x' * 65}/summary", headers=keys["ann"])
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_tags"
