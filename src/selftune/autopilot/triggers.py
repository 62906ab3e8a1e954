"""The autopilot's triggers: when the material waiting calls for a training job, and why.

Each trigger reads :class:`Activity`, the figures gathered from the store in one read, and
fires a :class:`Firing` with its reason and the figures behind it. Every trigger needs material
that arrived since the last training job: a refused job's examples do not make the next one
(the troubleshooter decides about retries), and neither does feedback with nothing to learn.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import struct
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from selftune.config import AutopilotSettings
from selftune.data.queue import lineage_examples, load_candidates
from selftune.memory.records import question_of
from selftune.registry.versions import serving_target
from selftune.store.schema import (
    Feedback,
    Interaction,
    Job,
    MemoryRecord,
    MemoryVector,
    TrainingExample,
    as_utc,
)

__all__ = ["Activity", "Correction", "Firing", "fired", "gather"]


@dataclasses.dataclass(frozen=True)
class Correction:
    """A corrected question, with its embedding where memory holds one."""

    question: str
    vector: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Activity:
    """What the triggers look at, read in one transaction."""

    now: dt.datetime
    last_run: dt.datetime | None  # when the newest training job was queued; None: never
    waiting: int  # curated examples the served version has not learned
    new_since_run: int  # curated examples that arrived since last_run
    oldest_new: dt.datetime | None
    newest_activity: dt.datetime | None  # the newest example or feedback
    ratings: tuple[int, ...]  # the latest ratings, newest first (+1 / -1)
    ratings_since_run: tuple[int, ...]  # the ratings since last_run, newest first
    corrections: tuple[Correction, ...]  # corrections since last_run, in the pattern window


@dataclasses.dataclass(frozen=True)
class Firing:
    """A trigger that fired: its name, a sentence for the timeline, and its figures."""

    trigger: str
    reason: str
    figures: dict[str, Any]


def fired(config: AutopilotSettings, activity: Activity) -> list[Firing]:
    """The triggers that fire on ``activity``, each only where switched on."""
    if activity.new_since_run == 0:
        return []
    checks = (
        (config.failure_trigger, _failures),
        (config.pattern_trigger, _patterns),
        (config.quality_trigger, _quality),
        (config.volume_trigger, _volume),
        (config.time_trigger, _time),
    )
    firings = (check(config, activity) for on, check in checks if on)
    return [firing for firing in firings if firing is not None]


def _volume(config: AutopilotSettings, activity: Activity) -> Firing | None:
    if activity.new_since_run < config.volume_examples:
        return None
    return Firing(
        "volume",
        f"{activity.new_since_run} new curated examples since the last run "
        f"(autopilot.volume_examples = {config.volume_examples})",
        {"new_examples": activity.new_since_run, "threshold": config.volume_examples},
    )


def _time(config: AutopilotSettings, activity: Activity) -> Firing | None:
    since = activity.last_run or activity.oldest_new
    if since is None:
        return None
    minutes = (activity.now - since).total_seconds() / 60
    if minutes < config.time_minutes:
        return None
    return Firing(
        "time",
        f"{minutes:.0f} minutes since the last run, with {activity.new_since_run} new curated "
        f"examples (autopilot.time_minutes = {config.time_minutes:g})",
        {"minutes": round(minutes, 1), "new_examples": activity.new_since_run},
    )


def _quality(config: AutopilotSettings, activity: Activity) -> Firing | None:
    window = activity.ratings[: config.quality_window]
    if len(window) < config.quality_min_ratings:
        return None
    rate = sum(1 for r in window if r < 0) / len(window)
    if rate <= config.quality_negative_rate:
        return None
    return Firing(
        "quality",
        f"{rate:.0%} of the last {len(window)} ratings were negative "
        f"(autopilot.quality_negative_rate = {config.quality_negative_rate:.0%})",
        {"negative_rate": round(rate, 4), "ratings": len(window)},
    )


def _failures(config: AutopilotSettings, activity: Activity) -> Firing | None:
    streak = 0
    for rating in activity.ratings_since_run:
        if rating >= 0:
            break
        streak += 1
    if streak < config.failure_streak:
        return None
    return Firing(
        "failures",
        f"{streak} negative ratings in a row (autopilot.failure_streak = {config.failure_streak})",
        {"streak": streak, "threshold": config.failure_streak},
    )


def _patterns(config: AutopilotSettings, activity: Activity) -> Firing | None:
    group = _largest_similar_group(activity.corrections, config.pattern_similarity)
    if len(group) < config.pattern_corrections:
        return None
    return Firing(
        "patterns",
        f"{len(group)} corrections of similar questions within "
        f"{config.pattern_window_minutes:g} minutes, such as {group[0].question!r}",
        {"corrections": len(group), "questions": [c.question for c in group[:5]]},
    )


def _largest_similar_group(
    corrections: Sequence[Correction], similarity: float
) -> list[Correction]:
    """The largest set of corrections similar to one of them: by the cosine of their
    embeddings where both have one, else by their normalized text."""
    best: list[Correction] = []
    for anchor in corrections:
        group = [c for c in corrections if _similar(anchor, c, similarity)]
        if len(group) > len(best):
            best = group
    return best


def _similar(a: Correction, b: Correction, similarity: float) -> bool:
    if a.vector is not None and b.vector is not None and len(a.vector) == len(b.vector):
        return sum(x * y for x, y in zip(a.vector, b.vector, strict=True)) >= similarity
    return _normalized(a.question) == _normalized(b.question)


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def gather(session: Session, config: AutopilotSettings, now: dt.datetime) -> Activity:
    """The figures the triggers need, from the store."""
    last_run = session.scalar(select(func.max(Job.created_at)).where(Job.kind == "train"))
    last_run = as_utc(last_run) if last_run is not None else None
    learned = lineage_examples(session, serving_target(session).version_id)
    waiting = [c for c in load_candidates(session) if c.id not in learned]
    new = [c for c in waiting if last_run is None or c.created > last_run]
    newest_example = session.scalar(select(func.max(TrainingExample.created_at)))
    newest_feedback = session.scalar(select(func.max(Feedback.created_at)))
    newest = [as_utc(t) for t in (newest_example, newest_feedback) if t is not None]
    window = max(config.quality_window, config.failure_streak)
    ratings = tuple(
        int(r)
        for r in session.scalars(
            select(Feedback.rating)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
            .limit(window)
        )
    )
    since_run = select(Feedback.rating).order_by(Feedback.created_at.desc(), Feedback.id.desc())
    if last_run is not None:
        since_run = since_run.where(Feedback.created_at > last_run)
    ratings_since_run = tuple(int(r) for r in session.scalars(since_run.limit(window)))
    return Activity(
        now=now,
        last_run=last_run,
        waiting=len(waiting),
        new_since_run=len(new),
        oldest_new=min((c.created for c in new), default=None),
        newest_activity=max(newest, default=None),
        ratings=ratings,
        ratings_since_run=ratings_since_run,
        corrections=_recent_corrections(session, config, now, last_run),
    )


# The most corrections the pattern trigger compares (pairwise: their square).
_MAX_CORRECTIONS = 200


def _recent_corrections(
    session: Session, config: AutopilotSettings, now: dt.datetime, last_run: dt.datetime | None
) -> tuple[Correction, ...]:
    start = now - dt.timedelta(minutes=config.pattern_window_minutes)
    if last_run is not None:
        start = max(start, last_run)
    rows = session.execute(
        select(Feedback.id, Interaction.messages)
        .join(Interaction, Interaction.id == Feedback.interaction_id)
        .where(Feedback.correction.is_not(None), Feedback.created_at > start)
        .order_by(Feedback.id.desc())
        .limit(_MAX_CORRECTIONS)
    ).all()
    vectors = _correction_vectors(session, [feedback_id for feedback_id, _ in rows])
    return tuple(
        Correction(question_of(messages), vectors.get(feedback_id))
        for feedback_id, messages in rows
    )


def _correction_vectors(session: Session, feedback_ids: list[int]) -> dict[int, tuple[float, ...]]:
    """The memory's embeddings of these corrections (memory on: recorded within a second of
    the feedback), by feedback id; one model's, where several embedded them."""
    if not feedback_ids:
        return {}
    rows = session.execute(
        select(MemoryRecord.source_id, MemoryVector.model, MemoryVector.dim, MemoryVector.vector)
        .join(MemoryVector, MemoryVector.record_id == MemoryRecord.id)
        .where(MemoryRecord.source_id.in_([f"feedback:{i}" for i in feedback_ids]))
    ).all()
    model = rows[0][1] if rows else None
    return {
        int(str(source).split(":", 1)[1]): struct.unpack(f"<{dim}f", blob)
        for source, row_model, dim, blob in rows
        if row_model == model
    }
