"""``GET /api/metrics/summary``: how the model is doing and what the learning loop does, in one
read: feedback's success rate over time and by user, tag and source; the recent training jobs'
figures; the training queue; the autopilot's scheduler.

A user's key gets its own figures (its interactions' feedback, its jobs, its examples in the
queue) and no other user is named; an admin's key (and an open server's callers) everyone's,
with each user's share in ``by_user`` and each job's ``user``. The scheduler's state is the
server's, the same for every caller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import CurrentCaller, State
from selftune.api.proxy import UPSTREAM_PREFIX
from selftune.api.queue import QueueStats
from selftune.api.responses import ERRORS
from selftune.autopilot.scheduler import scheduler_state
from selftune.config import Settings
from selftune.data.queue import lineage_examples, queue_stats
from selftune.registry.versions import serving_target
from selftune.store.schema import (
    Feedback,
    Interaction,
    Job,
    MemoryRecord,
    MemoryTag,
    Version,
    VersionExample,
    as_utc,
    utcnow,
)

__all__ = ["interaction_source", "router", "summary"]

router = APIRouter(prefix="/api/metrics", responses=ERRORS)

TOP_TAGS = 20  # the tags listed: those with the most rated interactions

# Where an interaction came from. Every API surface (OpenAI's, llama.cpp's, ollama's routes)
# records "chat" or "completion", so those are the sources; a connector records its name
# ("youtube"), and the proxy's answers are the upstream model's, told by their id.
interaction_source: ColumnElement[str] = case(
    (Interaction.id.startswith(UPSTREAM_PREFIX, autoescape=True), "upstream"),
    else_=Interaction.kind,
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ratings(_Body):
    rated: int = Field(description="interactions rated, each once, by its latest rating")
    positive: int
    negative: int
    corrected: int = Field(description="of those, the ones whose latest feedback corrects it")
    success_rate: float | None = Field(description="positive / rated; null: none rated")


class Day(Ratings):
    date: str = Field(description="the UTC day the ratings were given, YYYY-MM-DD")


class Group(Ratings):
    name: str | None = Field(description="the user, tag or source; a null tag: untagged")


class FeedbackSummary(_Body):
    days: int
    since: str = Field(description="ISO 8601: the window's start, the feedback counted")
    total: Ratings
    daily: list[Day] = Field(description="every day of the window, oldest first")
    by_user: list[Group] = Field(description="a user's key: its own only")
    by_tag: list[Group] = Field(
        description=f"the interactions' memory tags, the {TOP_TAGS} with the most ratings, and "
        "the untagged (an interaction counts under each of its tags)"
    )
    by_source: list[Group] = Field(
        description="chat or completion (any API: OpenAI's, llama.cpp's, ollama's), a "
        "connector (youtube), or upstream (the proxy's upstream answered)"
    )


class JobFigures(_Body):
    job_id: int
    user: str = Field(description="who queued it: a user, or autopilot")
    status: str
    stage: str
    progress: float
    trigger: str | None = Field(description="the autopilot trigger that queued it, if any")
    created_at: str
    started_at: str | None
    finished_at: str | None
    seconds: float | None = Field(description="run time: start to finish, or to now")
    stage_seconds: dict[str, float] = Field(description="per stage: dataset, train, save, ...")
    version: str | None = Field(description="the version it trained")
    version_id: int | None
    promoted: bool | None
    steps: int | None
    loss_first: float | None
    loss_last: float | None
    loss_min: float | None
    new_material_loss_last: float | None = Field(description="the last step's loss on new data")
    grad_norm_last: float | None
    grad_norm_max: float | None
    learning_rate: float | None
    examples_trained: int | None = Field(description="examples it trained on (replay included)")
    examples_heldout: int | None = Field(description="examples held out to judge it")
    tokens: int | None = Field(description="tokens trained on")
    train_seconds: float | None = Field(description="the training loop's own time")
    error: str | None


class _Open(BaseModel):
    # Open to fields the scheduler adds: its state is the autopilot's, this route shows it.
    model_config = ConfigDict(extra="allow")


class LastRun(_Open):
    at: str
    job_id: int | None
    trigger: str | None
    reason: str | None


class SchedulerState(_Open):
    enabled: bool
    scheduled: bool = Field(description="a training job is queued")
    running: bool = Field(description="a training job runs")
    paused: bool = Field(description="the running job is paused while requests are served")
    job_id: int | None = Field(description="the training job queued or running")
    last_run: LastRun | None = Field(description="the autopilot's last trigger")
    next_run: str | None = Field(description="ISO 8601, when a trigger is due; null: unknown")
    why: str = Field(description="what the scheduler waits for, or why it runs")
    triggers: dict[str, bool] = Field(description="which triggers are switched on")


class Summary(_Body):
    generated_at: str
    feedback: FeedbackSummary
    jobs: list[JobFigures] = Field(description="the latest training jobs, newest first")
    queue: QueueStats = Field(description="as GET /api/queue/stats")
    scheduler: SchedulerState


@dataclasses.dataclass
class _Tally:
    rated: int = 0
    positive: int = 0
    corrected: int = 0

    def add(self, rating: int, corrected: bool) -> None:
        self.rated += 1
        self.positive += rating > 0
        self.corrected += corrected

    def view(self) -> dict[str, Any]:
        return {
            "rated": self.rated,
            "positive": self.positive,
            "negative": self.rated - self.positive,
            "corrected": self.corrected,
            "success_rate": round(self.positive / self.rated, 4) if self.rated else None,
        }


def _groups(tallies: dict[Any, _Tally], top: int | None = None) -> list[dict[str, Any]]:
    """Most rated first (ties by name, the unnamed last); with ``top``, that many named ones
    and the unnamed."""
    ordered = sorted(
        tallies.items(), key=lambda item: (-item[1].rated, item[0] is None, str(item[0]))
    )
    if top is not None:
        named = [item for item in ordered if item[0] is not None][:top]
        ordered = [item for item in ordered if item[0] is None or item in named]
    return [{"name": name, **tally.view()} for name, tally in ordered]


def feedback_summary(session: Session, owner: str | None, days: int) -> dict[str, Any]:
    """Each interaction rated in the last ``days`` days, counted once by its latest rating."""
    today = utcnow().date()
    first = today - dt.timedelta(days=days - 1)
    since = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
    latest = select(func.max(Feedback.id)).group_by(Feedback.interaction_id)
    rated = (
        select(Interaction.id)
        .join(Feedback, Feedback.interaction_id == Interaction.id)
        .where(Feedback.id.in_(latest), Feedback.created_at >= since)
    )
    if owner is not None:
        rated = rated.where(Interaction.user_id == owner)
    rows = session.execute(
        rated.add_columns(
            Feedback.created_at,
            Feedback.rating,
            Feedback.correction.is_not(None),
            Interaction.user_id,
            interaction_source,
        )
    ).all()
    tags: dict[str | None, list[str]] = defaultdict(list)
    for interaction_id, tag in session.execute(
        select(MemoryRecord.source_id, MemoryTag.tag)
        .join(MemoryTag, MemoryTag.record_id == MemoryRecord.id)
        .where(MemoryRecord.kind == "interaction", MemoryRecord.source_id.in_(rated))
    ):
        tags[interaction_id].append(tag)
    total = _Tally()
    daily = {first + dt.timedelta(days=n): _Tally() for n in range(days)}
    by_user: dict[Any, _Tally] = defaultdict(_Tally)
    by_tag: dict[Any, _Tally] = defaultdict(_Tally)
    by_source: dict[Any, _Tally] = defaultdict(_Tally)
    for interaction_id, created, rating, corrected, user, source in rows:
        tallies = [total, by_user[user], by_source[source]]
        tallies += [by_tag[tag] for tag in tags.get(interaction_id, [None])]
        day = daily.get(as_utc(created).date())  # None: a clock ahead of this one's
        if day is not None:
            tallies.append(day)
        for tally in tallies:
            tally.add(rating, bool(corrected))
    return {
        "days": days,
        "since": since.isoformat(),
        "total": total.view(),
        "daily": [{"date": day.isoformat(), **tally.view()} for day, tally in daily.items()],
        "by_user": _groups(by_user),
        "by_tag": _groups(by_tag, TOP_TAGS),
        "by_source": _groups(by_source),
    }


def _figure(values: Any, pick: Callable[[list[Any]], Any]) -> Any:
    """``pick`` of a list of per-step figures; None where there are none."""
    return pick(values) if isinstance(values, list) and values else None


def job_figures(session: Session, owner: str | None, limit: int) -> list[dict[str, Any]]:
    """The latest ``limit`` training jobs, newest first, with their versions' figures."""
    query = select(Job).where(Job.kind == "train").order_by(Job.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(Job.user_id == owner)
    jobs = list(session.scalars(query))
    version_ids = {(j.result or {}).get("version_id") for j in jobs} - {None}
    rows = session.scalars(select(Version).where(Version.id.in_(version_ids)))
    versions = {version.id: version for version in rows}
    examples: dict[int, dict[str, int]] = defaultdict(dict)
    for version_id, role, count in session.execute(
        select(VersionExample.version_id, VersionExample.role, func.count())
        .where(VersionExample.version_id.in_(version_ids))
        .group_by(VersionExample.version_id, VersionExample.role)
    ):
        examples[version_id][role] = count
    return [_job_view(job, versions, examples) for job in jobs]


def _job_view(
    job: Job, versions: dict[int, Version], examples: dict[int, dict[str, int]]
) -> dict[str, Any]:
    result = job.result or {}
    version = versions.get(result["version_id"]) if result.get("version_id") else None
    metrics = version.train_metrics if version is not None else {}
    # A failed job keeps the recipe it ran with in its result (JobFailed's figures).
    config = metrics.get("config") or result.get("config") or {}
    roles = examples.get(version.id, {}) if version is not None else {}
    started = as_utc(job.started_at) if job.started_at else None
    ended = as_utc(job.finished_at) if job.finished_at else utcnow()
    return {
        "job_id": job.id,
        "user": job.user_id,
        "status": job.status,
        "stage": job.stage,
        "progress": round(job.progress, 4),
        "trigger": (job.params or {}).get("trigger"),
        "created_at": as_utc(job.created_at).isoformat(),
        "started_at": started.isoformat() if started else None,
        "finished_at": as_utc(job.finished_at).isoformat() if job.finished_at else None,
        "seconds": round((ended - started).total_seconds(), 2) if started else None,
        "stage_seconds": result.get("seconds") or {},
        "version": version.name if version is not None else None,
        "version_id": version.id if version is not None else None,
        "promoted": result.get("promoted"),
        "steps": metrics.get("steps"),
        "loss_first": _figure(metrics.get("losses"), lambda xs: xs[0]),
        "loss_last": _figure(metrics.get("losses"), lambda xs: xs[-1]),
        "loss_min": _figure(metrics.get("losses"), min),
        "new_material_loss_last": _figure(metrics.get("new_material_losses"), lambda xs: xs[-1]),
        "grad_norm_last": _figure(metrics.get("grad_norms"), lambda xs: xs[-1]),
        "grad_norm_max": _figure(metrics.get("grad_norms"), max),
        "learning_rate": config.get("learning_rate"),
        "examples_trained": roles.get("train") if version is not None else None,
        "examples_heldout": roles.get("heldout") if version is not None else None,
        "tokens": metrics.get("tokens"),
        "train_seconds": metrics.get("seconds"),
        "error": job.error,
    }


def summary(
    session: Session, settings: Settings, owner: str | None, *, days: int, jobs: int
) -> dict[str, Any]:
    """The whole summary as ``owner`` (None: everyone) sees it, read in one transaction."""
    serving = serving_target(session)
    learned = lineage_examples(session, serving.version_id)
    return {
        "generated_at": utcnow().isoformat(),
        "feedback": feedback_summary(session, owner, days),
        "jobs": job_figures(session, owner, jobs),
        "queue": {
            "serving": serving.name,
            **queue_stats(session, settings.queue, learned, utcnow(), owner),
        },
        "scheduler": scheduler_state(settings, session),
    }


@router.get("/summary", response_model=Summary)
async def get_summary(
    state: State,
    caller: CurrentCaller,
    days: Annotated[int, Query(ge=1, le=366, description="the feedback window, in days")] = 30,
    jobs: Annotated[int, Query(ge=0, le=100, description="how many training jobs")] = 10,
) -> dict[str, Any]:
    """Feedback's success rate per day and by user, memory tag and source; the latest training
    jobs' steps, losses, learning rate, gradient norms, examples and times; the training queue;
    the autopilot's scheduler (enabled, scheduled, running, paused, last and next run, and why).
    A user's key sees its own figures, an admin's everyone's.

    The source is where the interaction came from: every API surface records "chat" or
    "completion" (which route answered is not recorded), a connector its name, and the
    proxy's upstream answers are "upstream"."""
    owner = None if caller.admin else caller.user(None)

    def read() -> dict[str, Any]:
        with state.db.read() as session:
            return summary(session, state.settings, owner, days=days, jobs=jobs)

    return await run_in_threadpool(read)
