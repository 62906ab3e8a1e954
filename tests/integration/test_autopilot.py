"""The autopilot on the tiny model, driven by synthetic traffic: nobody calls /api/train.

A streak of corrections queues a job by itself; a recipe with an absurd learning rate is
diagnosed and retried lower, and nothing it made is served; a promotion whose answers are
rated down is rolled back; and GET /api/events tells each story in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from selftune.api.app import create_app
from selftune.autopilot.scheduler import tick
from selftune.autopilot.troubleshooter import after_training_job
from selftune.engines.transformers_engine import TransformersEngine
from selftune.store.schema import Job, Version
from selftune.store.users import ensure_user
from selftune.worker.loop import Worker
from tests.integration.conftest import tiny_settings
from tests.integration.lora_versions import add_version
from tests.integration.test_learning_loop import LEARNING, ask, teach, wait_for_serving

# Triggers act at once in tests: no quiet time, a look at every call.
PROMPT = {"enabled": True, "debounce_seconds": 0, "check_seconds": 0.01}
ONLY_FAILURES = {
    **PROMPT,
    "volume_trigger": False,
    "pattern_trigger": False,
    "quality_trigger": False,
    "time_trigger": False,
}


@pytest.fixture
def autopilot_client(
    request: pytest.FixtureRequest,
    settings_env: Path,
    tiny_model_dir: Path,
    adapter_engine: TransformersEngine,
) -> Iterator[tuple[TestClient, Worker]]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    sections = {**LEARNING, "autopilot": ONLY_FAILURES}
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    settings = tiny_settings(tiny_model_dir, **sections)
    with TestClient(create_app(settings, engine=adapter_engine)) as client:
        worker = Worker(settings)
        try:
            yield client, worker
        finally:
            worker.db.dispose()


def events(client: TestClient, *kinds: str) -> list[dict[str, Any]]:
    """The timeline, oldest first, of these kinds (all when none)."""
    params = [("kind", kind) for kind in kinds] + [("limit", "200")]
    page = client.get("/api/events", params=params)
    assert page.status_code == 200, page.text
    return list(reversed(page.json()["data"]))


def work(worker: Worker, rounds: int = 20) -> None:
    """What a worker does while idle and busy, until it has nothing left to do."""
    for _ in range(rounds):
        if not worker.work_once():
            return


def test_a_streak_of_corrections_trains_without_anyone_asking(autopilot_client: Any) -> None:
    client, worker = autopilot_client
    teach(client, questions=["What is the capital of Veloria?", "Which city rules Veloria?"])
    work(worker)
    assert events(client, "autopilot_triggered") == []  # two in a row: not yet a streak

    teach(client, questions=["Tell me the capital of Veloria."])
    work(worker)
    [triggered] = events(client, "autopilot_triggered")
    assert triggered["payload"]["trigger"] == "failures"
    assert "3 negative ratings in a row" in triggered["payload"]["reason"]
    job = client.get(f"/api/jobs/{triggered['payload']['job_id']}").json()
    assert job["status"] == "succeeded" and job["result"]["promoted"], job
    assert job["params"]["origin"] == "autopilot"

    kinds = [e["kind"] for e in events(client)]
    story = ["job_queued", "autopilot_triggered", "promote", "job_succeeded"]
    positions = [kinds.index(kind) for kind in story]
    assert positions == sorted(positions), kinds
    # The job is the one it was: no second job for the same material.
    work(worker)
    assert len(events(client, "autopilot_triggered")) == 1


# 0.5 diverges on the tiny model; the one fix, x0.02, lands on the rate it learns at (LEARNING).
@pytest.mark.parametrize(
    "autopilot_client",
    [{"train": {"learning_rate": 0.5}, "autopilot": {"learning_rate_factor": 0.02}}],
    indirect=True,
)
def test_an_absurd_learning_rate_is_diagnosed_and_retried_lower(autopilot_client: Any) -> None:
    client, worker = autopilot_client
    teach(client)
    work(worker, rounds=40)

    diagnoses = events(client, "autopilot_diagnosis")
    assert diagnoses, events(client)
    first = {d["kind"] for d in diagnoses[0]["payload"]["diagnoses"]}
    assert first & {"non_finite_loss", "exploding_loss", "gradient_spike", "bad_adapter"}, first
    fixes = events(client, "autopilot_fix")
    assert fixes and "lower the learning rate from 0.5" in fixes[0]["payload"]["fix"]
    retry = client.get(f"/api/jobs/{fixes[0]['payload']['retry_job_id']}").json()
    assert retry["params"]["overrides"]["learning_rate"] == pytest.approx(0.01)
    assert retry["params"]["chain"] == [diagnoses[0]["payload"]["job_id"]]
    # Whatever was served was trained at a sane rate: the gate saw every candidate.
    with worker.db.read() as session:
        for version in session.query(Version):
            rate = version.train_metrics["config"]["learning_rate"]
            if rate >= 0.5:
                assert not version.gate.get("passed"), version.gate
    served = client.get("/api/versions").json()["serving"]
    assert served != "base", "the retry at a sane rate learned the fact"
    with worker.db.read() as session:
        version = session.query(Version).filter_by(name=served).one()
        assert version.train_metrics["config"]["learning_rate"] == pytest.approx(0.01)


def test_a_promotion_rated_down_is_rolled_back(autopilot_client: Any, lora: Path) -> None:
    client, worker = autopilot_client
    settings = worker.settings
    for question in ("Hi there", "Good morning"):  # the base answers well enough
        reply = ask(client, question, user="bob")
        client.post("/api/feedback", json={"interaction_id": reply["id"], "rating": 1})
    add_version(settings, worker.db, lora, "v1")
    assert client.post("/api/versions/v1/promote", json={}).status_code == 200
    wait_for_serving(client, "v1")
    for index in range(5):
        reply = ask(client, f"Question number {index}", user="bob")
        assert reply["system_fingerprint"] == "v1"
        client.post("/api/feedback", json={"interaction_id": reply["id"], "rating": -1})
    work(worker)

    assert client.get("/api/versions").json()["serving"] == "base"
    kinds = [e["kind"] for e in events(client)]
    story = ["promote", "autopilot_diagnosis", "rollback", "autopilot_fix"]
    positions = [len(kinds) - 1 - kinds[::-1].index(kind) for kind in story]
    assert positions == sorted(positions), kinds
    [diagnosis] = events(client, "autopilot_diagnosis")
    [found] = diagnosis["payload"]["diagnoses"]
    assert found["kind"] == "served_regression"
    assert found["figures"]["negative_rate"] == 1.0 and found["figures"]["ratings"] == 5
    assert found["figures"]["parent_negative_rate"] == 0.0
    [rollback] = events(client, "rollback")
    assert rollback["payload"]["actor"] == "autopilot"


def test_the_autopilot_is_switched_off_and_on_at_run_time(autopilot_client: Any) -> None:
    client, worker = autopilot_client
    off = client.patch("/api/settings/autopilot", json={"enabled": False})
    assert off.status_code == 200, off.text
    assert off.json()["settings"]["enabled"] is False
    teach(client)
    work(worker)
    assert events(client, "autopilot_triggered") == []
    state = client.get("/api/autopilot").json()["state"]
    assert state["enabled"] is False and state["why"] == "the autopilot is off"

    bad = client.patch("/api/settings/autopilot", json={"failure_streak": 0})
    assert bad.status_code == 400
    assert "failure_streak" in bad.json()["error"]["message"]
    unknown = client.patch("/api/settings/autopilot", json={"streak": 2})
    assert (
        unknown.status_code == 400 and "no autopilot setting" in unknown.json()["error"]["message"]
    )

    assert client.patch("/api/settings/autopilot", json={"enabled": True}).status_code == 200
    assert tick(worker.settings, worker.db) is not None  # the worker's next look
    [triggered] = events(client, "autopilot_triggered")
    assert triggered["payload"]["trigger"] == "failures"
    changes = events(client, "autopilot_settings_changed")
    assert [c["payload"]["changed"] for c in changes] == [
        {"enabled": {"from": True, "to": False}},
        {"enabled": {"from": False, "to": True}},
    ]


def test_when_the_fixes_run_out_the_trigger_is_switched_off_with_an_alert(
    autopilot_client: Any,
) -> None:
    client, worker = autopilot_client
    with worker.db.write() as session:
        ensure_user(session, "autopilot")
        job = Job(
            kind="train",
            status="failed",
            user_id="autopilot",
            params={"trigger": "failures", "chain": [1, 2, 3, 4]},  # four retries already
            result={"diverged": {"step": 2, "loss": "nan"}, "config": {"learning_rate": 1e-6}},
            error="training diverged: the loss was nan at step 2",
        )
        session.add(job)
        session.flush()
        job_id = job.id
    assert after_training_job(worker.settings, worker.db, job_id) == []  # no fifth retry

    [alert] = events(client, "autopilot_alert")
    assert "4 fixes did not help" in alert["payload"]["message"]
    assert alert["payload"]["jobs"] == [1, 2, 3, 4, job_id]
    [switched] = events(client, "autopilot_settings_changed")
    assert switched["payload"]["changed"] == {"failure_trigger": {"from": True, "to": False}}
    assert switched["payload"]["by"] == "autopilot"
    settings = client.get("/api/autopilot").json()["settings"]
    assert settings["failure_trigger"] is False and settings["enabled"] is True
