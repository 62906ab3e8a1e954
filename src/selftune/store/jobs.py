"""The job queue, kept in the store: enqueue, claim, report, finish, recover, retry, cancel.

A worker claims a job inside one write transaction, so two workers never take the same job. A
running job carries a heartbeat; a job whose heartbeat is older than ``stale_seconds`` belonged to
a worker that died and is queued again (up to ``max_attempts`` in all). A worker's reports and
final write only count while the job is still its own (``worker_id``): one that went silent
without dying finds, when it is heard again, that it has lost the job, and writes nothing. The
training pipeline checks the same (:func:`holds`) in the transactions that register its version
and promote it, so a run that lost its job never serves what it trained.

Every change reads the job's row ``FOR UPDATE``. SQLite runs one write transaction at a time and
needs no row locks (SQLAlchemy leaves the clause out there); PostgreSQL runs them side by side,
so without the lock two workers could claim one job, or a cancel be lost to a claim. A claim
skips rows another transaction holds (``SKIP LOCKED``) and takes the next queued job instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selftune.store.db import Database
from selftune.store.schema import Event, Job, as_utc, utcnow
from selftune.store.users import ensure_user

__all__ = [
    "TERMINAL",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobLost",
    "add_job",
    "cancel",
    "claim",
    "enqueue",
    "enqueue_once",
    "finish",
    "holds",
    "job_view",
    "recover_stale",
    "report",
    "retry",
    "start",
    "train_outcome",
]

TERMINAL = ("succeeded", "failed", "cancelled")


class JobError(ValueError):
    """A job operation was refused; the message says why."""


class JobFailed(RuntimeError):
    """A job cannot do its work for a reason its message gives the user (no training data, an
    export that is not possible): recorded as the job's error, with no traceback in the log.
    ``figures``: what led to it, kept as the job's result for the troubleshooter."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures


class JobCancelled(RuntimeError):
    """The job was cancelled while it ran; raised where its progress is reported."""


class JobLost(RuntimeError):
    """The job was queued again (its worker was silent too long) or another worker runs it:
    this run's outcome is not the job's."""


def enqueue(db: Database, kind: str, user_id: str, params: dict[str, Any] | None = None) -> int:
    with db.write() as session:
        return add_job(session, kind, user_id, params).id


def add_job(
    session: Session,
    kind: str,
    user_id: str,
    params: dict[str, Any] | None = None,
    *,
    worker_id: str | None = None,
) -> Job:
    """Queue a job in ``session``'s write transaction, with the records it is for (an import's
    row): a worker sees the job once, and only if, they are committed together. With
    ``worker_id`` the job is that worker's, running, as :func:`start` records it."""
    ensure_user(session, user_id)
    job = Job(kind=kind, status="queued", user_id=user_id, params=params or {}, stage="queued")
    if worker_id is not None:
        now = utcnow()
        job.status, job.stage, job.worker_id, job.attempts = "running", "starting", worker_id, 1
        job.started_at = job.heartbeat_at = now
    session.add(job)
    session.flush()
    event = "job_queued" if worker_id is None else "job_started"
    session.add(Event(kind=event, payload={"job_id": job.id, "kind": kind}))
    return job


def enqueue_once(db: Database, kind: str, user_id: str, params: dict[str, Any]) -> tuple[int, bool]:
    """Queue a job unless one of ``kind`` with the same ``params`` is queued or running already
    (asking twice for the same export makes one job). Returns (job id, whether it is new)."""
    with db.write() as session:
        pending = session.scalars(
            select(Job)
            .where(Job.kind == kind, Job.status.in_(("queued", "running")))
            .order_by(Job.id)
            .with_for_update()
        ).all()
        for job in pending:
            if job.params == params:
                return job.id, False
        ensure_user(session, user_id)
        job = Job(kind=kind, status="queued", user_id=user_id, params=params, stage="queued")
        session.add(job)
        session.flush()
        session.add(Event(kind="job_queued", payload={"job_id": job.id, "kind": kind}))
        return job.id, True


def start(db: Database, kind: str, user_id: str, params: dict[str, Any], *, worker_id: str) -> int:
    """Record a job that ``worker_id`` runs at once, without queueing it (``selftune
    timestep`` runs its connectors in its own process). Report and finish it as a claimed one."""
    with db.write() as session:
        ensure_user(session, user_id)
        now = utcnow()
        job = Job(
            kind=kind,
            status="running",
            user_id=user_id,
            params=params,
            stage="starting",
            worker_id=worker_id,
            attempts=1,
            started_at=now,
            heartbeat_at=now,
        )
        session.add(job)
        session.flush()
        session.add(Event(kind="job_started", payload={"job_id": job.id, "kind": kind}))
        return job.id


def claim(db: Database, worker_id: str) -> Job | None:
    with db.write() as session:
        job = session.scalars(
            select(Job)
            .where(Job.status == "queued")
            .order_by(Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job is None:
            return None
        now = utcnow()
        job.status, job.worker_id, job.stage = "running", worker_id, "starting"
        job.attempts += 1
        job.started_at = job.heartbeat_at = now
        job.progress, job.error = 0.0, None
        return job


def _held(session: Session, job_id: int, worker_id: str) -> Job | None:
    """The job, its row locked until ``session`` ends, if ``worker_id`` still runs it. A worker
    whose heartbeat went stale (a database out of reach for a while) may find its job queued
    again, or claimed by another worker."""
    job = session.get(Job, job_id, with_for_update=True)
    running = job is not None and job.status == "running" and job.worker_id == worker_id
    return job if running else None


def holds(session: Session, job_id: int, worker_id: str) -> bool:
    """Whether ``worker_id`` still runs the job, its row locked until ``session`` ends: what the
    transaction then writes for the job cannot race its recovery by another worker."""
    return _held(session, job_id, worker_id) is not None


def report(db: Database, job_id: int, progress: float, stage: str, *, worker_id: str) -> bool:
    """Record progress and refresh the heartbeat; returns True if the worker should stop: a
    cancel was asked for, or the job is no longer this worker's (then nothing is written)."""
    with db.write() as session:
        job = _held(session, job_id, worker_id)
        if job is None:
            return True
        job.progress, job.stage, job.heartbeat_at = progress, stage, utcnow()
        return job.cancel_requested


def finish(
    db: Database,
    job_id: int,
    status: str,
    *,
    worker_id: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Record the end of a job this worker runs; False (nothing written) if it no longer does."""
    assert status in TERMINAL
    with db.write() as session:
        job = _held(session, job_id, worker_id)
        if job is None:
            return False
        job.status, job.result, job.error = status, result, error
        job.finished_at = utcnow()
        job.stage = status
        if status == "succeeded":
            job.progress = 1.0
        session.add(Event(kind=f"job_{status}", payload={"job_id": job_id, "error": error}))
        return True


def requeue(db: Database, job_id: int, reason: str, *, worker_id: str) -> None:
    """Put a running job back in the queue (its worker is stopping); the attempt is not counted."""
    with db.write() as session:
        job = _held(session, job_id, worker_id)
        if job is not None:
            job.status, job.stage, job.worker_id = "queued", "queued", None
            job.attempts = max(0, job.attempts - 1)
            session.add(Event(kind="job_requeued", payload={"job_id": job_id, "reason": reason}))


def recover_stale(db: Database, stale_seconds: float, max_attempts: int) -> list[int]:
    """Queue again (or fail, after too many attempts) running jobs whose worker went silent."""
    cutoff = utcnow() - dt.timedelta(seconds=stale_seconds)
    recovered = []
    with db.write() as session:
        for job in session.scalars(
            select(Job).where(Job.status == "running").with_for_update(skip_locked=True)
        ):
            if job.heartbeat_at is not None and as_utc(job.heartbeat_at) > cutoff:
                continue
            if job.cancel_requested:
                job.status, job.finished_at, job.stage = "cancelled", utcnow(), "cancelled"
            elif job.attempts >= max_attempts:
                job.status, job.finished_at, job.stage = "failed", utcnow(), "failed"
                job.error = f"the worker stopped during each of {job.attempts} attempts"
            else:
                job.status, job.stage, job.worker_id = "queued", "queued", None
            session.add(Event(kind="job_recovered", payload={"job_id": job.id, "to": job.status}))
            recovered.append(job.id)
    return recovered


def retry(db: Database, job_id: int) -> None:
    with db.write() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobError(f"no job with id {job_id}")
        if job.status not in ("failed", "cancelled"):
            raise JobError(
                f"job {job_id} is {job.status}; only failed or cancelled jobs are retried"
            )
        job.status, job.stage, job.error, job.result = "queued", "queued", None, None
        job.attempts, job.progress, job.cancel_requested = 0, 0.0, False
        session.add(Event(kind="job_retried", payload={"job_id": job_id}))


def cancel(db: Database, job_id: int) -> str:
    """Cancel a queued job at once, or ask a running one to stop; returns the new status."""
    with db.write() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobError(f"no job with id {job_id}")
        if job.status == "queued":
            job.status, job.stage, job.finished_at = "cancelled", "cancelled", utcnow()
            # A running job's end writes its own (job_cancelled, when the worker stops it).
            session.add(Event(kind="job_cancelled", payload={"job_id": job_id, "error": None}))
        elif job.status == "running":
            job.cancel_requested = True
        else:
            raise JobError(f"job {job_id} has already {job.status}")
        return job.status


# What to do about a candidate its gate refused, by the rule that refused it.
_REFUSAL_STEPS = {
    "new material": "it did not learn what was taught well enough: send more corrections, the "
    "fact phrased in several ways, and train again (each held-out answer is in the version's "
    "gate.heldout, GET /api/versions)",
    "regression loss": "it drifted from what the model knew: teach with more varied "
    "corrections (or fewer train.steps) and train again",
    "retention": "it lost answers the model knew: teach with more varied corrections and train "
    "again, or look at the version's gate.changed_known_answers in GET /api/versions",
}


def train_outcome(
    kind: str, status: str, result: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """(outcome, next step) of a finished training job: whether its version is served, or why
    not, and what to do about it. (None, None) for other jobs, unfinished or unsuccessful ones
    (their status and error say what happened), and results without a gate."""
    if kind != "train" or status != "succeeded" or not result or "promoted" not in result:
        return None, None
    version = result.get("version", "the version")
    gate = result.get("gate") or {}
    if result["promoted"]:
        return "served", (
            f"nothing to do: {version} answers now; if its answers are worse, roll back with "
            "POST /api/rollback (selftune rollback)"
        )
    if result.get("not_promoted"):  # it passed its gate, but what was served changed meanwhile
        return f"not served: {result['not_promoted']}", (
            f"promote {version} by hand if it should be served: POST /api/versions/{version}"
            f"/promote (selftune promote {version})"
        )
    steps = [_REFUSAL_STEPS[rule] for rule in gate.get("decided_by", ()) if rule in _REFUSAL_STEPS]
    if not steps:  # a result stored before the gate named its rules
        steps = ["see the version's gate in GET /api/versions, teach more and train again"]
    return f"learned, not served: {gate.get('reason', 'its gate refused it')}", (
        "; ".join(steps) + f". A version its gate refused is kept ({version}) but not served"
    )


def job_view(job: Job) -> dict[str, Any]:
    outcome, next_step = train_outcome(job.kind, job.status, job.result)
    return {
        "job_id": job.id,
        "kind": job.kind,
        "user": job.user_id,
        "status": job.status,
        "stage": job.stage,
        "progress": round(job.progress, 4),
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "params": job.params or {},
        "result": job.result,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "outcome": outcome,
        "next_step": next_step,
    }
