"""When connectors run: each on its own interval, as a job of kind ``timestep``.

A connector is due when it is enabled, has no timestep job queued or running, and its last run
is older than its interval; after failed runs (a spent quota) the wait doubles per failure in a
row, up to a day. Nothing is due while a training job runs. The worker checks this in its idle
loop and queues the due ones (:func:`queue_due`); ``selftune timestep`` runs them at once in its
own process (:func:`run_due`), for cron or a systemd timer.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from selftune.config import Settings
from selftune.connectors import CONNECTORS, ConnectorRun, ConnectorUnavailable
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.schema import Event, Job, as_utc, utcnow

__all__ = ["TIMESTEP", "due", "queue_due", "run_connector", "run_due", "training_runs"]

log = logging.getLogger(__name__)

TIMESTEP = "timestep"  # Job.kind of a connector's run; params {"connector": name}
SCHEDULER = "timestep"  # the user the runs are recorded under
_MAX_WAIT = 24 * 3600.0
_RECENT = 200  # timestep jobs read to find each connector's last runs


def training_runs(db: Database) -> bool:
    with db.read() as session:
        return (
            session.scalar(
                select(Job.id).where(Job.kind == "train", Job.status == "running").limit(1)
            )
            is not None
        )


def due(settings: Settings, db: Database, now: dt.datetime | None = None) -> list[str]:
    """The enabled connectors whose next run is due."""
    enabled = {name: c for name, c in CONNECTORS.items() if c.enabled(settings)}
    if not enabled:
        return []
    now = now or utcnow()
    with db.read() as session:
        recent = session.scalars(
            select(Job).where(Job.kind == TIMESTEP).order_by(Job.id.desc()).limit(_RECENT)
        ).all()
    found = []
    for name, connector in enabled.items():
        runs = [job for job in recent if (job.params or {}).get("connector") == name]
        if any(job.status in ("queued", "running") for job in runs):
            continue
        if runs:
            failures = next((i for i, job in enumerate(runs) if job.status != "failed"), len(runs))
            wait = min(connector.interval_seconds(settings) * 2**failures, _MAX_WAIT)
            if as_utc(runs[0].created_at) + dt.timedelta(seconds=wait) > now:
                continue
        found.append(name)
    return found


def queue_due(settings: Settings, db: Database) -> list[int]:
    """Queue a timestep job for each due connector (the worker's idle check)."""
    if training_runs(db):
        return []
    queued = []
    for name in due(settings, db):
        job_id, new = jobs.enqueue_once(db, TIMESTEP, SCHEDULER, {"connector": name})
        if new:
            queued.append(job_id)
    return queued


def run_connector(
    settings: Settings,
    db: Database,
    engine: Any,
    name: str,
    report: Callable[[float, str], None],
    job_id: int | None = None,
) -> dict[str, Any]:
    """One run of connector ``name``; raises ConnectorUnavailable when it cannot run."""
    connector = CONNECTORS.get(name)
    if connector is None:
        raise ConnectorUnavailable(f"no connector {name!r}; known: {sorted(CONNECTORS)}")
    try:
        summary = connector.run(ConnectorRun(settings, db, engine, report))
    except ConnectorUnavailable as exc:
        with db.write() as session:
            session.add(
                Event(
                    kind="connector_failed",
                    payload={"connector": name, "job_id": job_id, "error": str(exc)},
                )
            )
        raise
    with db.write() as session:
        session.add(
            Event(kind="connector_run", payload={"connector": name, "job_id": job_id, **summary})
        )
    return summary


def run_due(
    settings: Settings,
    db: Database,
    engine: Callable[[], Any],
    *,
    worker_id: str,
    only: str | None = None,
) -> list[dict[str, Any]]:
    """Run the due connectors (or ``only`` that one, due or not) here, each recorded as a
    timestep job; ``engine`` builds the engine on first need. Returns one outcome each."""
    names = [only] if only else ([] if training_runs(db) else due(settings, db))
    outcomes: list[dict[str, Any]] = []
    built: Any = None
    for name in names:
        job_id = jobs.start(db, TIMESTEP, SCHEDULER, {"connector": name}, worker_id=worker_id)

        def report(progress: float, stage: str, job_id: int = job_id) -> None:
            jobs.report(db, job_id, progress, stage, worker_id=worker_id)

        try:
            built = built or engine()
            result = run_connector(settings, db, built, name, report, job_id)
        except ConnectorUnavailable as exc:
            jobs.finish(db, job_id, "failed", worker_id=worker_id, error=str(exc))
            outcomes.append({"connector": name, "job_id": job_id, "error": str(exc)})
            continue
        except BaseException as exc:
            jobs.finish(db, job_id, "failed", worker_id=worker_id, error=f"{exc!r}")
            raise
        jobs.finish(db, job_id, "succeeded", worker_id=worker_id, result=result)
        outcomes.append({"connector": name, "job_id": job_id, "result": result})
    return outcomes
