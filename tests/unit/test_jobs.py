"""The job queue in the store: claim, report, finish, recover, retry, cancel."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from selftune.store import Database, jobs
from selftune.store.jobs import JobError
from selftune.store.schema import Event, Job, User, Worker, utcnow

W = "worker"  # the worker that claims the jobs below


def _job(db: Database, job_id: int) -> Job:
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _set(db: Database, job_id: int, **values: object) -> None:
    with db.write() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for key, value in values.items():
            setattr(job, key, value)


def _make_stale(db: Database, job_id: int, seconds: float = 3600) -> None:
    _set(db, job_id, heartbeat_at=utcnow() - dt.timedelta(seconds=seconds))


def _event_kinds(db: Database) -> list[str]:
    with db.read() as session:
        return list(session.scalars(select(Event.kind).order_by(Event.id)))


def test_enqueue_creates_a_queued_job_and_its_user(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice", {"steps": 3})
    job = _job(db, job_id)
    assert (job.kind, job.status, job.stage, job.user_id) == ("train", "queued", "queued", "alice")
    assert job.params == {"steps": 3}
    assert job.attempts == 0
    assert job.progress == 0.0
    assert job.cancel_requested is False
    with db.read() as session:
        assert session.get(User, "alice") is not None
    assert _event_kinds(db) == ["job_queued"]


def test_enqueue_twice_for_the_same_user(db: Database) -> None:
    first = jobs.enqueue(db, "train", "alice")
    second = jobs.enqueue(db, "train", "alice")
    assert second > first
    assert _job(db, first).params == {}


def test_claim_is_fifo_and_never_hands_out_a_job_twice(db: Database) -> None:
    ids = [jobs.enqueue(db, "train", "alice") for _ in range(3)]

    claimed = [jobs.claim(db, f"worker-{n}") for n in range(3)]

    assert [job.id for job in claimed if job is not None] == ids
    assert jobs.claim(db, "worker-late") is None
    for n, job_id in enumerate(ids):
        job = _job(db, job_id)
        assert (job.status, job.stage, job.worker_id) == ("running", "starting", f"worker-{n}")
        assert job.attempts == 1
        assert job.started_at is not None
        assert job.heartbeat_at is not None


def test_concurrent_workers_never_claim_the_same_job(db: Database) -> None:
    ids = [jobs.enqueue(db, "train", "alice") for _ in range(24)]
    handles = [Database(db.url) for _ in range(4)]

    def work(n: int) -> list[int]:
        mine = []
        while (job := jobs.claim(handles[n], f"worker-{n}")) is not None:
            mine.append(job.id)
        return mine

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for handle in handles:
        handle.dispose()

    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == ids  # every job once, none twice
    assert all(_job(db, job_id).attempts == 1 for job_id in ids)


def test_claim_on_an_empty_queue(db: Database) -> None:
    assert jobs.claim(db, W) is None


def test_claim_returns_a_usable_detached_job(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice", {"k": "v"})
    job = jobs.claim(db, W)
    assert job is not None
    assert (job.id, job.status, job.params, job.attempts) == (job_id, "running", {"k": "v"}, 1)


def test_report_records_progress_and_returns_the_cancel_flag(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    _set(db, job_id, heartbeat_at=utcnow() - dt.timedelta(seconds=30))
    before = _job(db, job_id).heartbeat_at
    assert before is not None

    assert jobs.report(db, job_id, 0.25, "training", worker_id=W) is False

    job = _job(db, job_id)
    assert (job.progress, job.stage) == (0.25, "training")
    assert job.heartbeat_at is not None
    assert job.heartbeat_at > before

    assert jobs.cancel(db, job_id) == "running"
    assert jobs.report(db, job_id, 0.5, "training", worker_id=W) is True


def test_report_on_a_job_that_is_not_running_asks_to_stop(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    assert jobs.report(db, job_id, 0.1, "x", worker_id=W) is True  # still queued
    assert jobs.report(db, 999, 0.1, "x", worker_id=W) is True  # unknown
    assert _job(db, job_id).stage == "queued"


def test_finish_succeeded(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    jobs.report(db, job_id, 0.5, "training", worker_id=W)

    jobs.finish(db, job_id, "succeeded", result={"version": "v1"}, worker_id=W)

    job = _job(db, job_id)
    assert (job.status, job.stage, job.progress) == ("succeeded", "succeeded", 1.0)
    assert job.result == {"version": "v1"}
    assert job.error is None
    assert job.finished_at is not None
    assert _event_kinds(db)[-1] == "job_succeeded"


def test_finish_failed_keeps_progress_and_error(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    jobs.report(db, job_id, 0.5, "training", worker_id=W)

    jobs.finish(db, job_id, "failed", error="out of memory", worker_id=W)

    job = _job(db, job_id)
    assert (job.status, job.stage, job.progress) == ("failed", "failed", 0.5)
    assert job.error == "out of memory"
    assert (
        jobs.report(db, job_id, 0.6, "training", worker_id=W) is True
    )  # a finished job is not revived
    assert _job(db, job_id).status == "failed"


def test_finish_rejects_a_non_terminal_status(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    with pytest.raises(AssertionError):
        jobs.finish(db, job_id, "running", worker_id=W)


def test_recover_stale_requeues_a_silent_job(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, "dead-worker")
    _make_stale(db, job_id)

    assert jobs.recover_stale(db, stale_seconds=60, max_attempts=3) == [job_id]

    job = _job(db, job_id)
    assert (job.status, job.stage, job.worker_id) == ("queued", "queued", None)
    assert job.attempts == 1
    assert _event_kinds(db)[-1] == "job_recovered"

    again = jobs.claim(db, "new-worker")
    assert again is not None
    assert again.id == job_id
    assert again.attempts == 2


def test_a_worker_that_lost_its_job_leaves_the_next_run_alone(db: Database) -> None:
    """Worker A went silent (its database out of reach for a while), the job was queued again
    and worker B claimed it. A's late beats, outcome and requeue write nothing."""
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, "a")
    _make_stale(db, job_id)
    jobs.recover_stale(db, stale_seconds=60, max_attempts=3)
    jobs.claim(db, "b")
    jobs.report(db, job_id, 0.5, "training", worker_id="b")

    assert jobs.report(db, job_id, 0.9, "a's stage", worker_id="a") is True  # A stops
    with db.write() as session:  # A's pipeline registers and promotes nothing
        assert not jobs.holds(session, job_id, "a")
        assert jobs.holds(session, job_id, "b")
    assert jobs.finish(db, job_id, "cancelled", worker_id="a") is False
    jobs.requeue(db, job_id, "a stops", worker_id="a")

    job = _job(db, job_id)
    assert (job.status, job.worker_id, job.progress, job.stage) == ("running", "b", 0.5, "training")
    assert jobs.finish(db, job_id, "succeeded", worker_id="b") is True
    assert _job(db, job_id).status == "succeeded"


def test_a_job_queued_again_is_not_ended_by_its_old_worker(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, "a")
    _make_stale(db, job_id)
    jobs.recover_stale(db, stale_seconds=60, max_attempts=3)

    assert jobs.report(db, job_id, 0.9, "training", worker_id="a") is True
    assert jobs.finish(db, job_id, "cancelled", error="stopped", worker_id="a") is False

    assert _job(db, job_id).status == "queued"  # not cancelled: the next worker runs it
    with db.write() as session:
        assert not jobs.holds(session, job_id, "a")
    claimed = jobs.claim(db, "b")
    assert claimed is not None and claimed.id == job_id


def test_recover_stale_fails_a_job_after_max_attempts(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    for attempt in range(1, 4):
        claimed = jobs.claim(db, f"worker-{attempt}")
        assert claimed is not None
        assert claimed.attempts == attempt
        _make_stale(db, job_id)
        assert jobs.recover_stale(db, stale_seconds=60, max_attempts=3) == [job_id]

    job = _job(db, job_id)
    assert (job.status, job.stage) == ("failed", "failed")
    assert job.error is not None
    assert "3 attempts" in job.error
    assert job.finished_at is not None
    assert jobs.claim(db, "worker-4") is None


def test_recover_stale_leaves_a_fresh_heartbeat_alone(db: Database) -> None:
    fresh = jobs.enqueue(db, "train", "alice")
    stale = jobs.enqueue(db, "train", "alice")
    queued = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, "worker-a")
    jobs.claim(db, "worker-b")
    _set(db, fresh, heartbeat_at=utcnow() - dt.timedelta(seconds=5))
    _make_stale(db, stale, seconds=120)

    assert jobs.recover_stale(db, stale_seconds=60, max_attempts=3) == [stale]

    assert (_job(db, fresh).status, _job(db, fresh).worker_id) == ("running", "worker-a")
    assert _job(db, stale).status == "queued"
    assert _job(db, queued).status == "queued"


def test_recover_stale_treats_a_missing_heartbeat_as_stale(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    _set(db, job_id, heartbeat_at=None)
    assert jobs.recover_stale(db, stale_seconds=60, max_attempts=3) == [job_id]


def test_recover_stale_ignores_finished_jobs(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    jobs.finish(db, job_id, "succeeded", worker_id=W)
    _make_stale(db, job_id)
    assert jobs.recover_stale(db, stale_seconds=60, max_attempts=3) == []
    assert _job(db, job_id).status == "succeeded"


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_retry_a_failed_or_cancelled_job(db: Database, status: str) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    jobs.report(db, job_id, 0.7, "training", worker_id=W)
    jobs.cancel(db, job_id)
    jobs.finish(db, job_id, status, result={"partial": True}, error="it broke", worker_id=W)

    jobs.retry(db, job_id)

    job = _job(db, job_id)
    assert (job.status, job.stage, job.error, job.result) == ("queued", "queued", None, None)
    assert (job.attempts, job.progress, job.cancel_requested) == (0, 0.0, False)
    assert _event_kinds(db)[-1] == "job_retried"
    claimed = jobs.claim(db, W)
    assert claimed is not None
    assert claimed.id == job_id


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_retry_refuses_other_statuses(db: Database, status: str) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    if status != "queued":
        jobs.claim(db, W)
    if status == "succeeded":
        jobs.finish(db, job_id, "succeeded", worker_id=W)
    with pytest.raises(JobError, match=f"is {status}"):
        jobs.retry(db, job_id)
    assert _job(db, job_id).status == status


def test_retry_unknown_job(db: Database) -> None:
    with pytest.raises(JobError, match="no job with id 7"):
        jobs.retry(db, 7)


def test_cancel_a_queued_job_at_once(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    assert jobs.cancel(db, job_id) == "cancelled"
    job = _job(db, job_id)
    assert (job.status, job.stage) == ("cancelled", "cancelled")
    assert job.finished_at is not None
    assert jobs.claim(db, W) is None
    with db.read() as session:  # the timeline says so, as it does for a running job's end
        kinds = list(session.scalars(select(Event.kind).order_by(Event.id)))
    assert kinds == ["job_queued", "job_cancelled"]


def test_cancel_a_running_job_asks_it_to_stop(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    assert jobs.cancel(db, job_id) == "running"
    job = _job(db, job_id)
    assert job.status == "running"
    assert job.cancel_requested is True
    assert jobs.report(db, job_id, 0.1, "training", worker_id=W) is True


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_a_finished_job_is_refused(db: Database, status: str) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    jobs.finish(db, job_id, status, worker_id=W)
    with pytest.raises(JobError, match=f"already {status}"):
        jobs.cancel(db, job_id)
    assert _job(db, job_id).status == status


def test_cancel_unknown_job(db: Database) -> None:
    with pytest.raises(JobError, match="no job with id 3"):
        jobs.cancel(db, 3)


def test_requeue_a_running_job_does_not_count_the_attempt(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)

    jobs.requeue(db, job_id, "worker shutting down", worker_id=W)

    job = _job(db, job_id)
    assert (job.status, job.stage, job.worker_id, job.attempts) == ("queued", "queued", None, 0)
    assert _event_kinds(db)[-1] == "job_requeued"
    claimed = jobs.claim(db, "worker-2")
    assert claimed is not None
    assert claimed.attempts == 1


def test_requeue_leaves_other_statuses_alone(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, W)
    jobs.finish(db, job_id, "succeeded", worker_id=W)
    jobs.requeue(db, job_id, "late", worker_id=W)
    jobs.requeue(db, 999, "unknown", worker_id=W)
    assert _job(db, job_id).status == "succeeded"


def test_job_view(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    queued = jobs.job_view(_job(db, job_id))
    assert set(queued) == {
        "job_id",
        "kind",
        "user",
        "status",
        "stage",
        "progress",
        "attempts",
        "cancel_requested",
        "params",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "outcome",
        "next_step",
    }
    assert queued["job_id"] == job_id
    assert queued["outcome"] is None and queued["next_step"] is None
    assert queued["status"] == "queued"
    assert queued["started_at"] is None
    assert queued["finished_at"] is None
    dt.datetime.fromisoformat(queued["created_at"])

    jobs.claim(db, W)
    jobs.report(db, job_id, 1 / 3, "training", worker_id=W)
    running = jobs.job_view(_job(db, job_id))
    assert running["progress"] == 0.3333
    assert running["attempts"] == 1
    assert running["started_at"] is not None

    jobs.finish(db, job_id, "succeeded", result={"version": "v1"}, worker_id=W)
    done = jobs.job_view(_job(db, job_id))
    assert done["result"] == {"version": "v1"}
    assert done["finished_at"] is not None


_PASSED = {"passed": True, "reason": "better on new material, no regression", "decided_by": []}
_REFUSED = {
    "passed": False,
    "reason": "regression: 88% of known answers kept, needs 100% (changed: 'What is 2+2?')",
    "decided_by": ["retention"],
}


def test_a_refused_candidate_is_told_apart_from_a_served_one() -> None:
    served = {"version": "v1", "promoted": True, "not_promoted": None, "gate": _PASSED}
    outcome, step = jobs.train_outcome("train", "succeeded", served)
    assert outcome == "served" and step is not None and "POST /api/rollback" in step

    refused = {"version": "v2", "promoted": False, "not_promoted": None, "gate": _REFUSED}
    outcome, step = jobs.train_outcome("train", "succeeded", refused)
    assert outcome == f"learned, not served: {_REFUSED['reason']}"
    assert step is not None and "changed_known_answers" in step and "v2" in step

    moved = "the served version changed from v1 to base while v3 was being evaluated against it"
    passed = {"version": "v3", "promoted": False, "not_promoted": moved, "gate": _PASSED}
    outcome, step = jobs.train_outcome("train", "succeeded", passed)
    assert outcome == f"not served: {moved}"
    assert step is not None and "POST /api/versions/v3/promote" in step

    old = {"version": "v4", "promoted": False, "gate": {"passed": False, "reason": "worse"}}
    assert jobs.train_outcome("train", "succeeded", old)[0] == "learned, not served: worse"

    assert jobs.train_outcome("train", "failed", None) == (None, None)
    assert jobs.train_outcome("train", "running", None) == (None, None)
    assert jobs.train_outcome("export", "succeeded", {"path": "x"}) == (None, None)
    assert jobs.train_outcome("train", "succeeded", {"version": "v1"}) == (None, None)


def test_recover_stale_cancels_a_job_whose_cancel_was_requested(db: Database) -> None:
    job_id = jobs.enqueue(db, "train", "alice")
    jobs.claim(db, "dead-worker")
    jobs.cancel(db, job_id)  # asked to stop, then the worker died before its next report
    _make_stale(db, job_id)

    jobs.recover_stale(db, stale_seconds=60, max_attempts=3)

    assert _job(db, job_id).status == "cancelled"
    assert jobs.claim(db, "new-worker") is None


def test_worker_presence(db: Database) -> None:
    from selftune.store.workers import live_workers, mark_worker

    mark_worker(db, "host:1", "starting")
    mark_worker(db, "host:2", "ready")
    mark_worker(db, "host:2", "stopped")
    assert live_workers(db) == [{"id": "host:1", "state": "starting"}]


def test_a_worker_is_seen_while_it_loads_and_compiles(db: Database) -> None:
    """The presence thread keeps the row fresh with the worker's state for as long as it runs
    (loading and compiling take minutes), and no late beat overwrites the final 'stopped'."""
    import time

    from selftune.store.workers import live_workers, mark_worker
    from selftune.worker.loop import _Presence

    def states() -> list[str]:
        return [w["state"] for w in live_workers(db)]

    presence = _Presence(db, "host:1", every=0.02)
    presence.start()
    try:
        deadline = time.monotonic() + 10
        while states() != ["starting"]:
            assert time.monotonic() < deadline, states()
            time.sleep(0.01)
        presence.state = "compiling"
        while states() != ["compiling"]:
            assert time.monotonic() < deadline, states()
            time.sleep(0.01)
        with db.write() as session:  # as a minute of compiling would leave it without beats
            session.get(Worker, "host:1").heartbeat_at = utcnow() - dt.timedelta(hours=1)
        while states() != ["compiling"]:
            assert time.monotonic() < deadline, states()
            time.sleep(0.01)
    finally:
        presence.stop()
    mark_worker(db, "host:1", "stopped")
    time.sleep(0.1)
    assert states() == []
