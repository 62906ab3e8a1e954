"""``GET /api/metrics/summary`` and selftune's series on ``/metrics``: feedback by day, user,
tag and source; training jobs' figures; the queue and the scheduler; each user's key sees its
own figures. Jobs and versions are written to the store as a worker would leave them: nothing
is trained here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from selftune.api.analytics import TOP_TAGS
from selftune.api.app import create_app
from selftune.api.auth import create_key
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.db import Database
from selftune.store.schema import (
    Event,
    Job,
    MemoryRecord,
    MemoryTag,
    TrainingExample,
    Version,
    VersionExample,
    utcnow,
)
from selftune.store.users import ensure_user
from tests.integration.conftest import tiny_settings

TRAIN_METRICS = {
    "losses": [2.5, 1.75, 1.25],
    "new_material_losses": [2.0, 1.5, 1.0],
    "grad_norms": [0.5, 0.75, 0.25],
    "seconds": 3.5,
    "tokens": 120,
    "steps": 3,
    "config": {"learning_rate": 0.0002, "batch_size": 2},
}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ask(client: TestClient, user: str | None, headers: dict[str, str] | None = None) -> str:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    if user is not None:
        body["user"] = user
    answer = client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def _rate(
    client: TestClient,
    interaction: str,
    rating: int,
    headers: dict[str, str] | None = None,
    **more: str,
) -> None:
    body = {"interaction_id": interaction, "rating": rating, **more}
    answer = client.post("/api/feedback", json=body, headers=headers or {})
    assert answer.status_code == 200, answer.text


def _tag(db: Database, interaction: str, user: str, *tags: str) -> None:
    """File ``interaction`` in memory under ``tags``, as a chat with ``tags`` is filed."""
    with db.write() as session:
        record = MemoryRecord(
            user_id=user, kind="interaction", source_id=interaction, source="chat", text="Q: hi"
        )
        session.add(record)
        session.flush()
        session.add_all(MemoryTag(record_id=record.id, tag=tag, origin="user") for tag in tags)


def _trained_job(db: Database, user: str, name: str) -> int:
    """A training job that succeeded, with its version, as the worker leaves them."""
    with db.write() as session:
        ensure_user(session, user)
        examples = [
            TrainingExample(user_id=user, source="submitted", messages=[], active=True)
            for _ in range(3)
        ]
        job = Job(kind="train", status="succeeded", user_id=user, params={"trigger": "volume"})
        session.add_all([*examples, job])
        session.flush()
        version = Version(
            name=name,
            base_model="tiny",
            base_fingerprint="f" * 16,
            path=f"/nowhere/{name}",
            chat_template="",
            job_id=job.id,
            train_metrics=TRAIN_METRICS,
        )
        session.add(version)
        session.flush()
        roles = ["train", "train", "heldout"]
        session.add_all(
            VersionExample(version_id=version.id, example_id=e.id, role=role)
            for e, role in zip(examples, roles, strict=True)
        )
        started = utcnow() - dt.timedelta(seconds=30)
        job.started_at, job.finished_at = started, started + dt.timedelta(seconds=20)
        job.result = {
            "version_id": version.id,
            "version": name,
            "promoted": False,
            "seconds": {"dataset": 1.0, "train": 4.0},
        }
        return job.id


def _failed_job(db: Database, user: str) -> int:
    with db.write() as session:
        ensure_user(session, user)
        job = Job(
            kind="train",
            status="failed",
            user_id=user,
            error="training diverged",
            result={"diverged": {"step": 2}, "config": {"learning_rate": 0.5}},
            started_at=utcnow(),
            finished_at=utcnow(),
        )
        session.add(job)
        session.flush()
        return job.id


def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed by the official client's parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _summary(client: TestClient, headers: dict[str, str] | None = None, **params: Any) -> Any:
    answer = client.get("/api/metrics/summary", params=params, headers=headers or {})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def secured(
    settings_env: Path, tiny_model_dir: Path, tiny_engine: TransformersEngine
) -> Iterator[TestClient]:
    settings = tiny_settings(
        tiny_model_dir, serve={"auth_required": True, "auth_failures_per_minute": 0}
    )
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        yield client


def test_feedback_success_rate_by_day_user_tag_and_source(client: TestClient) -> None:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    liked, rerated = _ask(client, "alice"), _ask(client, "alice")
    corrected = _ask(client, "bob")
    _ask(client, "bob")  # never rated: not counted
    completion = client.post(
        "/v1/completions", json={"prompt": "Once", "max_tokens": 2, "user": "bob"}
    ).json()["id"]
    _rate(client, liked, 1)
    _rate(client, rerated, -1)
    _rate(client, rerated, 1)  # the latest rating counts, once
    _rate(client, corrected, -1, correction="Hello! How can I help?")
    _rate(client, completion, 1)
    _tag(db, liked, "alice", "garden", "roses")
    _tag(db, corrected, "bob", "garden")

    feedback = _summary(client, days=7)["feedback"]
    assert feedback["days"] == 7 and len(feedback["daily"]) == 7
    total = {"rated": 4, "positive": 3, "negative": 1, "corrected": 1, "success_rate": 0.75}
    assert feedback["total"] == total
    assert feedback["daily"][-1] == {"date": utcnow().date().isoformat(), **total}
    assert all(day["rated"] == 0 and day["success_rate"] is None for day in feedback["daily"][:-1])

    def rates(groups: list[dict[str, Any]]) -> dict[str | None, tuple[int, int]]:
        return {g["name"]: (g["rated"], g["positive"]) for g in groups}

    assert rates(feedback["by_user"]) == {"alice": (2, 2), "bob": (2, 1)}
    assert rates(feedback["by_tag"]) == {"garden": (2, 1), "roses": (1, 1), None: (2, 2)}
    assert rates(feedback["by_source"]) == {"chat": (3, 2), "completion": (1, 1)}
    assert [g["name"] for g in feedback["by_user"]] == ["alice", "bob"]  # most rated, then name


def test_training_jobs_figures(client: TestClient) -> None:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    trained = _trained_job(db, "alice", "v1")
    failed = _failed_job(db, "alice")

    summary = _summary(client, jobs=5)
    assert [job["job_id"] for job in summary["jobs"]] == [failed, trained]
    broken, done = summary["jobs"]
    assert done["status"] == "succeeded" and done["user"] == "alice"
    assert (done["version"], done["trigger"], done["promoted"]) == ("v1", "volume", False)
    assert (done["steps"], done["loss_first"], done["loss_last"], done["loss_min"]) == (
        3,
        2.5,
        1.25,
        1.25,
    )
    assert (done["grad_norm_last"], done["grad_norm_max"]) == (0.25, 0.75)
    assert done["new_material_loss_last"] == 1.0
    assert done["learning_rate"] == 0.0002
    assert (done["examples_trained"], done["examples_heldout"], done["tokens"]) == (2, 1, 120)
    assert done["seconds"] == 20.0 and done["train_seconds"] == 3.5
    assert done["stage_seconds"] == {"dataset": 1.0, "train": 4.0}
    assert broken["error"] == "training diverged" and broken["learning_rate"] == 0.5
    assert broken["version"] is None and broken["steps"] is None
    assert len(_summary(client, jobs=1)["jobs"]) == 1
    assert _summary(client, jobs=0)["jobs"] == []


def test_queue_and_scheduler_state(client: TestClient) -> None:
    _rate(client, _ask(client, "alice"), -1, correction="Hello! How can I help?")
    summary = _summary(client)
    queue = summary["queue"]
    assert queue["serving"] == "base"
    assert sum(source["waiting"] for source in queue["by_source"]) == 1
    scheduler = summary["scheduler"]
    expected = {"enabled", "scheduled", "running", "paused", "last_run", "next_run", "why"}
    assert expected <= set(scheduler)
    assert isinstance(scheduler["why"], str) and scheduler["why"]
    assert not scheduler["running"] and not scheduler["paused"]


def test_metrics_add_selftunes_series_beside_llamacpps(client: TestClient) -> None:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    _rate(client, _ask(client, "alice"), 1)
    _rate(client, _ask(client, "bob"), -1, correction="Hello! How can I help?")
    trained = _trained_job(db, "alice", "v1")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE llamacpp:prompt_tokens_total counter" in response.text
    series = _series(response.text)  # the official parser reads all of it
    assert series[("llamacpp:prompt_tokens_total", ())] > 0
    assert series[("llamacpp:n_tokens_max", ())] > 0
    assert series[("selftune_interactions_total", ())] == 2
    positive = (("rating", "positive"), ("source", "chat"))
    negative = (("rating", "negative"), ("source", "chat"))
    assert series[("selftune_feedback_total", positive)] == 1
    assert series[("selftune_feedback_total", negative)] == 1
    assert series[("selftune_corrections_total", (("source", "chat"),))] == 1
    assert series[("selftune_jobs", (("kind", "train"), ("status", "succeeded")))] == 1
    # The correction's example and the job's three, none learned by the served base.
    assert series[("selftune_queue_waiting_examples", ())] == 4
    assert series[("selftune_served_version_id", ())] == 0
    assert series[("selftune_last_training_job_id", ())] == trained
    assert series[("selftune_last_training_loss", ())] == 1.25
    assert series[("selftune_last_training_steps", ())] == 3
    assert series[("selftune_last_training_examples", ())] == 2
    assert series[("selftune_last_training_learning_rate", ())] == 0.0002
    for flag in ("enabled", "scheduled", "running", "paused"):
        assert series[(f"selftune_autopilot_{flag}", ())] in (0, 1)


def test_metrics_keep_llamacpps_series_when_the_store_fails(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]

    def locked() -> Any:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(db, "read", locked)
    response = client.get("/metrics")
    assert response.status_code == 200
    names = {name for name, _ in _series(response.text)}
    assert "llamacpp:n_decode_total" in names
    assert not any(name.startswith("selftune_") for name in names)


def test_a_users_key_sees_its_own_figures(secured: TestClient) -> None:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    alice, bob = _bearer(create_key(db, "alice")), _bearer(create_key(db, "bob"))
    admin = _bearer(create_key(db, "ops", admin=True))
    _rate(secured, _ask(secured, None, alice), 1, alice)
    _rate(secured, _ask(secured, None, bob), -1, bob)
    _rate(secured, _ask(secured, None, bob), -1, bob)
    alices_job, bobs_job = _trained_job(db, "alice", "v1"), _trained_job(db, "bob", "v2")

    mine = _summary(secured, alice)
    assert [g["name"] for g in mine["feedback"]["by_user"]] == ["alice"]
    assert mine["feedback"]["total"]["rated"] == 1
    assert [job["job_id"] for job in mine["jobs"]] == [alices_job]
    assert "bob" not in str(mine)
    everyone = _summary(secured, admin)
    assert [g["name"] for g in everyone["feedback"]["by_user"]] == ["bob", "alice"]
    assert [job["job_id"] for job in everyone["jobs"]] == [bobs_job, alices_job]

    def scraped(headers: dict[str, str]) -> dict[Any, float]:
        response = secured.get("/metrics", headers=headers)
        assert response.status_code == 200, response.text
        return _series(response.text)

    assert scraped(alice)[("selftune_interactions_total", ())] == 1
    assert scraped(alice)[("selftune_last_training_job_id", ())] == alices_job
    assert scraped(admin)[("selftune_interactions_total", ())] == 3
    assert scraped(admin)[("selftune_last_training_job_id", ())] == bobs_job
    assert secured.get("/api/metrics/summary").status_code == 401


def test_the_timeline_holds_the_autopilots_events_for_admins(secured: TestClient) -> None:
    db = secured.app.state.selftune.db  # type: ignore[attr-defined]
    alice, admin = _bearer(create_key(db, "alice")), _bearer(create_key(db, "ops", admin=True))
    kinds = [
        "autopilot_triggered",
        "autopilot_diagnosis",
        "autopilot_fix",
        "autopilot_alert",
        "autopilot_settings_changed",
    ]
    with db.write() as session:
        session.add_all(Event(kind=kind, payload={"job_id": 1}) for kind in kinds)

    def listed(headers: dict[str, str], **params: Any) -> list[str]:
        page = secured.get("/api/events", params=params, headers=headers)
        assert page.status_code == 200, page.text
        return [event["kind"] for event in page.json()["data"]]

    assert listed(admin, kind=kinds) == kinds[::-1]
    assert listed(admin, kind=["autopilot_fix", "autopilot_alert"]) == [
        "autopilot_alert",
        "autopilot_fix",
    ]
    assert listed(alice, kind=kinds) == []  # the autopilot's events are an admin's to read
    newest = secured.get("/api/events", params={"limit": 1}, headers=admin).json()["data"][0]
    assert listed(admin, after=newest["id"] - 2) == kinds[:-3:-1]
    assert listed(admin, after=newest["id"]) == []


def test_the_most_rated_tags_are_listed_and_the_untagged(client: TestClient) -> None:
    db = client.app.state.selftune.db  # type: ignore[attr-defined]
    tagged, untagged = _ask(client, "alice"), _ask(client, "alice")
    _rate(client, tagged, 1)
    _rate(client, untagged, -1)
    _tag(db, tagged, "alice", *(f"tag{n:02}" for n in range(TOP_TAGS + 5)))

    by_tag = _summary(client)["feedback"]["by_tag"]
    named = [group["name"] for group in by_tag if group["name"] is not None]
    assert named == [f"tag{n:02}" for n in range(TOP_TAGS)]  # equal counts: by name
    assert by_tag[-1]["name"] is None and by_tag[-1]["negative"] == 1
