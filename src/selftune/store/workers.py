"""Worker presence: each worker keeps a row fresh; the server reports who is alive."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from selftune.store.db import Database
from selftune.store.schema import Worker, as_utc, utcnow

__all__ = ["PRESENCE_SECONDS", "live_workers", "mark_worker"]

# A worker refreshes its row at least this often; one silent for three times longer is gone.
PRESENCE_SECONDS = 5.0


def mark_worker(db: Database, worker_id: str, state: str) -> None:
    with db.write() as session:
        row = session.get(Worker, worker_id)
        if row is None:
            session.add(Worker(id=worker_id, state=state))
        else:
            row.state, row.heartbeat_at = state, utcnow()


def live_workers(db: Database) -> list[dict[str, Any]]:
    cutoff = utcnow() - dt.timedelta(seconds=3 * PRESENCE_SECONDS)
    with db.read() as session:
        rows = session.scalars(select(Worker).where(Worker.state != "stopped")).all()
    live = []
    for row in rows:
        if as_utc(row.heartbeat_at) > cutoff:
            live.append({"id": row.id, "state": row.state})
    return live
