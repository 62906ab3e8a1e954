"""The training queue: which curated examples the next run takes, in what order, and why the
others wait.

A run takes the examples the served version never trained on ("new"), highest priority first:
each kind has a priority (queue.priority_*), halved with every queue.recency_half_life_hours of
age. At most queue.max_new_examples of them; the rest wait. Beside them it replays examples the
served version's lineage already learned, queue.replay_ratio per new one and at least
queue.replay_min, drawn evenly over the whole history (a hash of the id, so a run can be
recomputed), so that earlier material is not forgotten.

Contributor caps (``selftune.curate.cap_contributors``) then keep any one user (and source) to
its share of the run, replay included, so a flood from one user cannot make up the run. A run
whose candidates all come from one user (a personal install) is not capped by user: a share of
one contributor's own material would select nothing. See docs/queue.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selftune.config import QueueSettings
from selftune.curate import Example, cap_contributors
from selftune.store.schema import TrainingExample, Version, VersionExample, as_utc

__all__ = [
    "SOURCES",
    "Candidate",
    "RunPlan",
    "lineage_examples",
    "load_candidates",
    "plan_run",
    "priority_of",
    "queue_stats",
]

SOURCES = ("correction", "rating", "submitted", "upstream", "import")

# Why an example is not in the run: the caps' reasons, and the queue's own.
WAITING = "waiting"  # past queue.max_new_examples: the next run takes it
NOT_REPLAYED = "not_replayed"  # learned before; this run replays others


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A curated example the queue may take: its id, who and what made it, and when."""

    id: int
    user: str
    source: str
    created: dt.datetime


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run's examples by role, in priority order, and each left-out example's reason
    (``user_share``, ``source_share``, ``run_size``, ``waiting``, ``not_replayed``)."""

    new: list[Candidate]
    replay: list[Candidate]
    left_out: dict[int, str]
    priorities: dict[int, float]

    @property
    def size(self) -> int:
        return len(self.new) + len(self.replay)

    def shares(self) -> dict[str, float]:
        """Each user's share of the run."""
        counts = Counter(c.user for c in [*self.new, *self.replay])
        return {user: n / self.size for user, n in sorted(counts.items())} if self.size else {}


def priority_of(candidate: Candidate, settings: QueueSettings, now: dt.datetime) -> float:
    """The kind's priority halved per queue.recency_half_life_hours of age (higher first)."""
    weight = getattr(settings, f"priority_{candidate.source}", settings.priority_submitted)
    age_hours = max(0.0, (now - candidate.created).total_seconds() / 3600)
    return float(weight) * 0.5 ** (age_hours / settings.recency_half_life_hours)


def _replay_rank(candidate: Candidate) -> str:
    """An order over earlier examples that spreads a run's replay over the whole history."""
    return hashlib.sha256(f"replay:{candidate.id}".encode()).hexdigest()


def plan_run(
    candidates: Iterable[Candidate],
    learned: set[int],
    settings: QueueSettings,
    now: dt.datetime,
) -> RunPlan:
    """The next run over ``candidates`` (curated, active examples), where ``learned`` holds the
    ids the served version's lineage trained on or held out."""
    pool = list(candidates)
    priorities = {c.id: priority_of(c, settings, now) for c in pool}
    new = sorted((c for c in pool if c.id not in learned), key=lambda c: (-priorities[c.id], -c.id))
    old = sorted((c for c in pool if c.id in learned), key=_replay_rank)
    left_out = {c.id: WAITING for c in new[settings.max_new_examples :]}
    new = new[: settings.max_new_examples]
    n_replay = max(settings.replay_min, math.ceil(settings.replay_ratio * len(new)))
    left_out.update({c.id: NOT_REPLAYED for c in old[n_replay:]})
    old = old[:n_replay]
    ordered = [*new, *old]
    capped = _capped(ordered, settings)
    chosen = {c.id for c in capped[0]}
    left_out.update(capped[1])
    return RunPlan(
        new=[c for c in new if c.id in chosen],
        replay=[c for c in old if c.id in chosen],
        left_out=left_out,
        priorities=priorities,
    )


def _capped(
    ordered: Sequence[Candidate], settings: QueueSettings
) -> tuple[list[Candidate], dict[int, str]]:
    """``ordered`` with contributor caps applied in that order; a share is not applied where
    one user (or one source) made every candidate, as a share of one selects nothing."""
    if not ordered:
        return [], {}
    users = {c.user for c in ordered}
    sources = {c.source for c in ordered}
    user_share = settings.max_user_share if len(users) > 1 else 1.0
    source_share = settings.max_source_share if len(sources) > 1 else 1.0
    position = {c.id: i for i, c in enumerate(ordered)}
    by_id = {c.id: c for c in ordered}
    examples = [Example((), c.user, c.source, id=str(c.id)) for c in ordered]
    run = cap_contributors(
        examples,
        user_share,
        max_source_share=source_share,
        priority=lambda e: position[int(e.id or 0)],
    )
    selected = [by_id[int(e.id or 0)] for e in run.selected]
    return selected, {int(e.id or 0): reason for e, reason in run.left_out}


def lineage_examples(session: Session, version_id: int | None) -> set[int]:
    """The ids of the examples ``version_id`` and its ancestors trained on, replayed or held
    out (none for the base): what the served model has learned or been judged on."""
    ids: set[int] = set()
    visited: set[int] = set()
    while version_id is not None and version_id not in visited:
        visited.add(version_id)
        ids.update(
            session.scalars(
                select(VersionExample.example_id).where(VersionExample.version_id == version_id)
            )
        )
        version_id = session.scalar(select(Version.parent_id).where(Version.id == version_id))
    return ids


def load_candidates(session: Session) -> list[Candidate]:
    """Every example training may use (curated, kept and active), oldest first."""
    rows = session.execute(
        select(
            TrainingExample.id,
            TrainingExample.user_id,
            TrainingExample.source,
            TrainingExample.created_at,
        )
        .where(TrainingExample.active)
        .order_by(TrainingExample.id)
    )
    return [Candidate(i, user, source, as_utc(created)) for i, user, source, created in rows]


def queue_stats(
    session: Session,
    settings: QueueSettings,
    learned: set[int],
    now: dt.datetime,
    owner: str | None = None,
) -> dict[str, Any]:
    """What the queue holds by source and state, and what the next run would take. ``owner``:
    only that user's examples are counted (the plan is still the whole queue's), and no other
    user is named."""
    query = select(
        TrainingExample.id,
        TrainingExample.user_id,
        TrainingExample.source,
        TrainingExample.state,
        TrainingExample.active,
        TrainingExample.created_at,
    )
    if owner is not None:
        query = query.where(TrainingExample.user_id == owner)
    by_source: dict[str, Counter[str]] = {}
    by_state: Counter[str] = Counter()
    oldest_waiting: dt.datetime | None = None
    for example_id, _user, source, state, active, created in session.execute(query):
        counts = by_source.setdefault(source, Counter())
        counts[state] += 1
        by_state[state] += 1
        if active:
            counts["learned" if example_id in learned else "waiting"] += 1
            if example_id not in learned:
                created = as_utc(created)
                oldest_waiting = min(oldest_waiting or created, created)
    plan = plan_run(load_candidates(session), learned, settings, now)
    mine = (lambda c: True) if owner is None else (lambda c: c.user == owner)
    left_out: Counter[str] = Counter()
    if owner is None:
        left_out.update(plan.left_out.values())
    else:
        owned = {c.id for c in load_candidates(session) if c.user == owner}
        left_out.update(reason for i, reason in plan.left_out.items() if i in owned)
    shares = plan.shares()
    return {
        "by_source": [
            {
                "source": source,
                "priority": getattr(settings, f"priority_{source}", settings.priority_submitted),
                **{key: by_source.get(source, Counter())[key] for key in _COUNTED},
            }
            for source in sorted(set(SOURCES) | set(by_source))
        ],
        "by_state": {state: by_state[state] for state in ("kept", "rejected", "flagged")},
        "oldest_waiting": oldest_waiting.isoformat(timespec="seconds") if oldest_waiting else None,
        "next_run": {
            "new": sum(1 for c in plan.new if mine(c)),
            "replayed": sum(1 for c in plan.replay if mine(c)),
            "size": plan.size,
            "left_out": dict(sorted(left_out.items())),
            "user_shares": shares if owner is None else {owner: shares.get(owner, 0.0)},
        },
    }


_COUNTED = ("kept", "rejected", "flagged", "waiting", "learned")
