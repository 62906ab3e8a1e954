"""``GET /api/queue/stats``: what the training queue holds and what the next run would take
(``selftune.data.queue``; docs/queue.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import CurrentCaller, State
from selftune.api.responses import ERRORS
from selftune.data.queue import lineage_examples, queue_stats
from selftune.registry.versions import serving_target
from selftune.store.schema import utcnow

__all__ = ["QueueStats", "router"]

router = APIRouter(prefix="/api/queue", responses=ERRORS)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceCounts(_Body):
    source: str = Field(description="correction, rating, submitted, upstream or import")
    priority: float = Field(description="its priority (queue.priority_<source>)")
    kept: int
    rejected: int
    flagged: int = Field(description="held in quarantine for an admin")
    waiting: int = Field(description="kept, not yet learned by the served version")
    learned: int = Field(description="kept, trained or judged by the served version's lineage")


class NextRun(_Body):
    new: int = Field(description="examples the next run would learn")
    replayed: int = Field(description="earlier examples it would train on again")
    size: int = Field(description="the whole run's examples (everyone's)")
    left_out: dict[str, int] = Field(
        description="examples it would leave out per reason: waiting, not_replayed, user_share, "
        "source_share, run_size"
    )
    user_shares: dict[str, float] = Field(
        description="each user's share of the run (a user's key: its own only)"
    )


class QueueStats(_Body):
    serving: str = Field(description="the version the queue measures against ('base': none)")
    by_source: list[SourceCounts]
    by_state: dict[str, int]
    oldest_waiting: str | None = Field(description="ISO 8601 time of the oldest waiting example")
    next_run: NextRun


@router.get("/stats", response_model=QueueStats)
async def get_queue_stats(state: State, caller: CurrentCaller) -> dict[str, Any]:
    """The queue by source and state and the next run's make-up; an admin's key (or an open
    server) counts everyone's examples, a user's key its own."""
    owner = None if caller.admin else caller.user(None)

    def read() -> dict[str, Any]:
        with state.db.read() as session:
            current = serving_target(session)
            learned = lineage_examples(session, current.version_id)
            stats = queue_stats(session, state.settings.queue, learned, utcnow(), owner)
        return {"serving": current.name, **stats}

    return await run_in_threadpool(read)
