"""selftune's own Prometheus series, read from the store when ``GET /metrics`` is scraped, beside
llama.cpp's (api/metrics.py): interactions and feedback, jobs, the training queue, the autopilot,
the served version and the last training run.

Each scrape runs a handful of counts and small reads (no whole-table loads), in the scrape's
thread. As in ``GET /api/metrics/summary``, a user's key counts its own interactions, feedback,
jobs and examples; an admin's everyone's. Labels are few-valued (rating, source, kind, status):
a user or a job is never a label, so the number of series stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from selftune.api.analytics import interaction_source
from selftune.api.auth import Caller
from selftune.api.state import AppState
from selftune.autopilot.control import current
from selftune.autopilot.scheduler import pending_training, training_flags
from selftune.config import Settings
from selftune.registry.versions import serving_target
from selftune.store.schema import (
    Feedback,
    Interaction,
    Job,
    TrainingExample,
    Version,
    VersionExample,
)

__all__ = ["StoreMetrics", "scrape"]

log = logging.getLogger(__name__)


def scrape(state: AppState, caller: Caller) -> str:
    """The whole ``/metrics`` text (blocking: call it in a thread). A store that cannot be read
    costs its own series, never llama.cpp's: a scraper keeps seeing the server."""
    owner = None if caller.admin else caller.user(None)
    try:
        with state.db.read() as session:
            return state.metrics.render(StoreMetrics(session, state.settings, owner))
    except SQLAlchemyError as exc:
        log.warning("/metrics without the store's series: %s", exc)
        return state.metrics.render()


class StoreMetrics:
    """A collector of the store's figures as ``owner`` (None: everyone) sees them, read in
    ``session`` when the exposition is written."""

    def __init__(self, session: Session, settings: Settings, owner: str | None) -> None:
        self.session = session
        self.settings = settings
        self.owner = owner

    def _mine(self, column: Any) -> ColumnElement[bool]:
        return true() if self.owner is None else column == self.owner

    def collect(self) -> Iterator[Metric]:
        yield from self._feedback()
        yield from self._jobs()
        yield from self._queue()
        yield from self._autopilot()
        yield from self._last_training()

    def _feedback(self) -> Iterator[Metric]:
        session = self.session
        interactions = session.scalar(
            select(func.count()).select_from(Interaction).where(self._mine(Interaction.user_id))
        )
        yield CounterMetricFamily(
            "selftune_interactions", "Interactions answered and recorded.", value=interactions or 0
        )
        # Every rating given counts (a counter only grows): a re-rated answer counts twice,
        # where the summary's success rate counts each answer's latest rating once.
        ratings = CounterMetricFamily(
            "selftune_feedback", "Ratings given, by rating and source.", labels=["rating", "source"]
        )
        corrections = CounterMetricFamily(
            "selftune_corrections", "Corrections sent, by source.", labels=["source"]
        )
        rows = session.execute(
            select(
                Feedback.rating,
                interaction_source,
                func.count(),
                func.count(Feedback.correction),
            )
            .join(Interaction, Interaction.id == Feedback.interaction_id)
            .where(self._mine(Interaction.user_id))
            .group_by(Feedback.rating, interaction_source)
        )
        corrected: dict[str, int] = {}
        for rating, source, count, with_correction in rows:
            ratings.add_metric(["positive" if rating > 0 else "negative", source], count)
            corrected[source] = corrected.get(source, 0) + with_correction
        for source, count in sorted(corrected.items()):
            corrections.add_metric([source], count)
        yield ratings
        yield corrections

    def _jobs(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "selftune_jobs", "Jobs by kind and status.", labels=["kind", "status"]
        )
        for kind, status, count in self.session.execute(
            select(Job.kind, Job.status, func.count())
            .where(self._mine(Job.user_id))
            .group_by(Job.kind, Job.status)
            .order_by(Job.kind, Job.status)
        ):
            jobs.add_metric([kind, status], count)
        yield jobs

    def _queue(self) -> Iterator[Metric]:
        session = self.session
        served = serving_target(session).version_id
        yield GaugeMetricFamily(
            "selftune_served_version_id",
            "The version the served name answers with (0: the base model).",
            value=served or 0,
        )
        # The served version and its ancestors: what they trained on is learned, not waiting.
        lineage, version_id = [], served
        while version_id is not None and version_id not in lineage:
            lineage.append(version_id)
            version_id = session.scalar(select(Version.parent_id).where(Version.id == version_id))
        learned = select(VersionExample.example_id).where(VersionExample.version_id.in_(lineage))
        waiting = session.scalar(
            select(func.count())
            .select_from(TrainingExample)
            .where(
                TrainingExample.active,
                TrainingExample.id.not_in(learned),
                self._mine(TrainingExample.user_id),
            )
        )
        yield GaugeMetricFamily(
            "selftune_queue_waiting_examples",
            "Curated examples the served version has not learned: the next runs' material.",
            value=waiting or 0,
        )

    def _autopilot(self) -> Iterator[Metric]:
        # The scheduler's flags (scheduler_state's), without its reasons: those read every
        # waiting example, too much for each scrape.
        flags = {
            "enabled": current(self.settings, self.session).enabled,
            **training_flags(pending_training(self.session)),
        }
        for name, value in flags.items():
            yield GaugeMetricFamily(
                f"selftune_autopilot_{name}",
                f"1 when the autopilot's scheduler is {name} (GET /api/metrics/summary: why).",
                value=int(value),
            )

    def _last_training(self) -> Iterator[Metric]:
        session = self.session
        job = session.scalar(
            select(Job)
            .where(Job.kind == "train", Job.status == "succeeded", self._mine(Job.user_id))
            .order_by(Job.id.desc())
            .limit(1)
        )
        version_id = (job.result or {}).get("version_id") if job is not None else None
        version = session.get(Version, version_id) if version_id else None
        if job is None or version is None:
            return  # nothing trained yet: no series, rather than zeros that look like figures
        metrics = version.train_metrics or {}
        losses = metrics.get("losses") or [None]
        grad_norms = metrics.get("grad_norms") or [None]
        learning_rate = (metrics.get("config") or {}).get("learning_rate")
        trained = session.scalar(
            select(func.count())
            .select_from(VersionExample)
            .where(VersionExample.version_id == version.id, VersionExample.role == "train")
        )
        figures = {
            "job_id": ("The last successful training job's id.", job.id),
            "version_id": ("The version it trained.", version.id),
            "steps": ("Its optimizer steps.", metrics.get("steps")),
            "loss": ("Its last step's training loss.", losses[-1]),
            "grad_norm": ("Its last step's gradient norm.", grad_norms[-1]),
            "learning_rate": ("Its learning rate.", learning_rate),
            "examples": ("The examples it trained on, replay included.", trained),
            "tokens": ("The tokens it trained on.", metrics.get("tokens")),
            "seconds": ("Its training loop's seconds.", metrics.get("seconds")),
        }
        for name, (help_text, value) in figures.items():
            if value is not None:
                yield GaugeMetricFamily(f"selftune_last_training_{name}", help_text, value=value)
