"""The autopilot's scheduler: looks at the triggers and queues at most one training job.

The worker calls :func:`tick` every ``autopilot.check_seconds`` while idle. A job is queued only
when none is queued or running, enough material waits (``train.min_new_examples``), and the
newest feedback is ``autopilot.debounce_seconds`` old: a burst of corrections makes one job.
The job and its ``autopilot_triggered`` event (which triggers fired, why, with their figures)
are written in one transaction, after checking again that no other worker queued one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selftune.autopilot.control import current
from selftune.autopilot.triggers import Activity, Firing, fired, gather
from selftune.autopilot.troubleshooter import AUTOPILOT
from selftune.config import AutopilotSettings, Settings
from selftune.store.db import Database
from selftune.store.jobs import add_job
from selftune.store.schema import Event, Job, utcnow

__all__ = ["pending_training", "scheduler_state", "tick", "training_flags"]


def pending_training(session: Session) -> Job | None:
    """A training job that is queued or running, if any."""
    return session.scalar(
        select(Job)
        .where(Job.kind == "train", Job.status.in_(("queued", "running")))
        .order_by(Job.id)
        .limit(1)
    )


def training_flags(job: Job | None) -> dict[str, bool]:
    """Whether a training job is scheduled (queued), running, and paused for serving, from the
    pending one (:func:`pending_training`)."""
    running = job is not None and job.status == "running"
    return {
        "scheduled": job is not None and job.status == "queued",
        "running": running,
        "paused": running and job is not None and "paused" in (job.stage or ""),
    }


def _due(
    settings: Settings, config: AutopilotSettings, session: Session, now: dt.datetime
) -> tuple[Activity, list[Firing], str]:
    """The activity, the triggers that fire, and what holds them back ("" when nothing)."""
    activity = gather(session, config, now)
    firings = fired(config, activity)
    wait = ""
    if activity.waiting < settings.train.min_new_examples:
        wait = (
            f"{activity.waiting} curated examples wait, a run needs "
            f"{settings.train.min_new_examples} (train.min_new_examples)"
        )
    elif firings and activity.newest_activity is not None:
        quiet = (now - activity.newest_activity).total_seconds()
        if quiet < config.debounce_seconds:
            wait = (
                f"waiting for {config.debounce_seconds - quiet:.0f} s more without feedback "
                "(autopilot.debounce_seconds), so that a burst makes one job"
            )
    return activity, firings, wait


def tick(settings: Settings, db: Database, now: dt.datetime | None = None) -> int | None:
    """Queue a training job if a trigger fires; its id, or None."""
    now = now or utcnow()
    with db.read() as session:
        config = current(settings, session)
        if not config.enabled or pending_training(session) is not None:
            return None
        _, firings, wait = _due(settings, config, session, now)
    if not firings or wait:
        return None
    with db.write() as session:
        if pending_training(session) is not None:  # another worker was first
            return None
        first = firings[0]
        job = add_job(
            session,
            "train",
            AUTOPILOT,
            {
                "reason": f"autopilot, {first.trigger} trigger: {first.reason}",
                "origin": "autopilot",
                "trigger": first.trigger,
            },
        )
        session.add(
            Event(
                kind="autopilot_triggered",
                payload={
                    "job_id": job.id,
                    "trigger": first.trigger,
                    "reason": first.reason,
                    "figures": first.figures,
                    "also": [
                        {"trigger": f.trigger, "reason": f.reason, "figures": f.figures}
                        for f in firings[1:]
                    ],
                },
            )
        )
        return job.id


def scheduler_state(settings: Settings, session: Session) -> dict[str, Any]:
    """What the autopilot is doing and why, for GET /api/autopilot and the metrics summary:
    enabled, the training job queued or running (and whether it is paused for serving), the
    last run, when the next can be, and the reason."""
    now = utcnow()
    config = current(settings, session)
    job = pending_training(session)
    last = session.scalar(
        select(Event).where(Event.kind == "autopilot_triggered").order_by(Event.id.desc()).limit(1)
    )
    state: dict[str, Any] = {
        "enabled": config.enabled,
        **training_flags(job),
        "job_id": job.id if job is not None else None,
        "last_run": (
            {
                "at": last.created_at.isoformat(timespec="seconds"),
                "job_id": last.payload.get("job_id"),
                "trigger": last.payload.get("trigger"),
                "reason": last.payload.get("reason"),
            }
            if last is not None
            else None
        ),
        "triggers": {
            name: getattr(config, f"{name}_trigger")
            for name in ("time", "volume", "quality", "failure", "pattern")
        },
    }
    if not config.enabled:
        return {**state, "next_run": None, "why": "the autopilot is off"}
    if job is not None:
        return {**state, "next_run": None, "why": f"training job {job.id} is {job.status}"}
    activity, firings, wait = _due(settings, config, session, now)
    if firings and not wait:
        why = f"due now: {firings[0].reason}"
        next_run: str | None = now.isoformat(timespec="seconds")
    elif wait:
        why, next_run = wait, None
    else:
        why, next_run = _what_would_fire(config, activity), _time_trigger_at(config, activity)
    return {**state, "next_run": next_run, "why": why}


def _what_would_fire(config: AutopilotSettings, activity: Activity) -> str:
    if activity.new_since_run == 0:
        return "no new curated material since the last run"
    return (
        f"{activity.new_since_run} new curated examples; the volume trigger needs "
        f"{config.volume_examples}, the failure trigger {config.failure_streak} negative "
        "ratings in a row"
    )


def _time_trigger_at(config: AutopilotSettings, activity: Activity) -> str | None:
    since = activity.last_run or activity.oldest_new
    if not config.time_trigger or since is None or activity.new_since_run == 0:
        return None
    return (since + dt.timedelta(minutes=config.time_minutes)).isoformat(timespec="seconds")
