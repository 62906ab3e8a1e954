"""The same store on PostgreSQL. Runs when SELFTUNE_TEST_POSTGRES_URL names an empty database,
e.g. postgresql+psycopg://selftune@127.0.0.1:55432/selftune_test (see README, Development)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from selftune.memory.records import NewRecord, Scope, TagFilter
from selftune.memory.service import Memory, MemoryConfig, SearchQuery
from selftune.registry import versions as registry
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.interactions import record_interaction
from selftune.store.schema import AliasChange, Base, Interaction, Job, User, Version
from tests.integration import test_memory_scope as scope_tests

URL = os.environ.get("SELFTUNE_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set SELFTUNE_TEST_POSTGRES_URL to run")


@pytest.fixture
def pg() -> Iterator[Database]:
    assert URL
    db = Database(URL)
    with db.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db.migrate()
    yield db
    db.dispose()


def test_migrations_match_the_tables(pg: Database) -> None:
    with pg.engine.connect() as conn:
        # Made by migration 0008 outside the declared tables: the keyword index (an expression
        # index on memory_records) and, where pgvector is installed, the vector column.
        unmapped = {"ix_memory_records_fts", "embedding"}
        context = MigrationContext.configure(
            conn, opts={"include_name": lambda name, *_: name not in unmapped}
        )
        assert compare_metadata(context, Base.metadata) == []
    pg.migrate()  # idempotent


def test_jobs_and_alias_on_postgres(pg: Database) -> None:
    job_id = jobs.enqueue(pg, "train", "alice")
    claimed = jobs.claim(pg, "w1")
    assert claimed is not None and claimed.id == job_id
    assert jobs.claim(pg, "w2") is None
    with pg.write() as session:
        version = Version(
            name="v1",
            base_model="b",
            base_fingerprint="f",
            path="/x",
            chat_template="t",
            gate={"passed": True},
        )
        session.add(version)
        session.flush()
        registry.promote(session, version.id, actor="test", reason="test")
    with pg.read() as session:
        assert registry.serving_target(session).name == "v1"
    with pg.write() as session:
        registry.rollback(session, actor="test", reason="test")
    with pg.read() as session:
        assert registry.serving_target(session).name == "base"


def test_alias_changes_on_postgres_wait_for_each_other(pg: Database) -> None:
    """PostgreSQL runs transactions side by side: a second promotion must wait for the first
    to commit and then build on it, not append to the history it saw before."""
    with pg.write() as session:
        ids = []
        for name in ("v1", "v2"):
            version = Version(
                name=name,
                base_model="b",
                base_fingerprint="f",
                path=f"/{name}",
                chat_template="t",
                gate={"passed": True},
            )
            session.add(version)
            session.flush()
            ids.append(version.id)
    v1, v2 = ids
    errors: list[BaseException] = []

    def promote_v2() -> None:
        try:
            with pg.write() as session:
                registry.promote(session, v2, actor="second", reason="test")
        except BaseException as exc:  # surfaced by the asserts below
            errors.append(exc)

    second = threading.Thread(target=promote_v2)
    with pg.write() as session:
        registry.promote(session, v1, actor="first", reason="test")
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive(), "the second promotion did not wait for the first"
    second.join(timeout=30)
    assert not second.is_alive() and not errors, errors
    with pg.read() as session:
        changes = session.scalars(select(AliasChange).order_by(AliasChange.id)).all()
        assert [(c.version_id, c.previous_version_id) for c in changes] == [(v1, None), (v2, v1)]
        assert registry.alias_stack(session) == [None, v1, v2]


def test_a_job_being_claimed_is_skipped_by_a_second_worker(pg: Database) -> None:
    """Worker 1 holds job 1's row mid-claim: worker 2 takes job 2 at once, neither waiting
    for worker 1 nor claiming job 1 a second time."""
    first, second = jobs.enqueue(pg, "train", "alice"), jobs.enqueue(pg, "train", "alice")
    claimed: list[int | None] = []

    def claim_as_worker_2() -> None:
        job = jobs.claim(pg, "w2")
        claimed.append(job.id if job else None)

    with pg.write() as session:  # worker 1, between reading the row and committing its claim
        session.execute(select(Job).where(Job.id == first).with_for_update())
        worker_2 = threading.Thread(target=claim_as_worker_2)
        worker_2.start()
        worker_2.join(timeout=10)
        assert not worker_2.is_alive(), "worker 2 waited for worker 1's row"
    assert claimed == [second]


def test_a_cancel_waits_for_a_claim_in_progress(pg: Database) -> None:
    """A cancel during a claim sees the claim's outcome: the job is running with a stop
    requested, not marked cancelled while a worker runs it."""
    job_id = jobs.enqueue(pg, "train", "alice")
    outcome: list[str] = []
    canceller = threading.Thread(target=lambda: outcome.append(jobs.cancel(pg, job_id)))
    with pg.write() as session:  # a claim between reading the row and committing
        job = session.get(Job, job_id, with_for_update=True)
        assert job is not None
        canceller.start()
        canceller.join(timeout=1.0)
        assert canceller.is_alive(), "the cancel did not wait for the claim"
        job.status = "running"
    canceller.join(timeout=30)
    assert outcome == ["running"]
    with pg.read() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "running" and job.cancel_requested


def test_interactions_are_recorded_on_postgres(pg: Database) -> None:
    for interaction_id in ("chatcmpl-1", "chatcmpl-2"):  # the second finds its user there
        record_interaction(
            pg,
            id=interaction_id,
            user_id="alice",
            kind="completion",
            model="selftune",
            version_id=None,
            messages=[{"prompt": "Quenmoor is"}],
            response=" the capital of Veloria.",
            finish_reason="length",
            prompt_tokens=3,
            completion_tokens=6,
            latency_ms=2.0,
            chat_template=None,
        )
    with pg.read() as session:
        assert session.scalars(select(User.id)).all() == ["alice"]
        assert session.scalars(select(Interaction.id).order_by(Interaction.id)).all() == [
            "chatcmpl-1",
            "chatcmpl-2",
        ]


def test_memory_search_on_postgres(pg: Database, tmp_path: Path) -> None:
    """PostgreSQL's text search serves keyword search (stemmed, any word), the tag filters and
    scopes work in its SQL, and vector search runs on the same embedded index."""
    memory = Memory(
        pg,
        MemoryConfig("hashed-words", tmp_path / "memory"),
        loader=scope_tests.embedder,
        name_of=lambda spec: spec,
    )
    try:
        memory.write(
            [
                NewRecord("ann", "note", "The harbor lamps were repaired.", tags=["town"]),
                NewRecord("bob", "note", "A harbor of copper boats.", tags=["boats"]),
                NewRecord("bob", "note", "Copper signal lamps.", tags=["boats"], shared=True),
            ]
        )
        memory.start()
        assert memory.settle(30), memory.error

        def texts(query: str, scope: Scope, **options: Any) -> list[str]:
            hits = memory.search(SearchQuery(query, **options), scope)
            return [hit.record["text"] for hit in hits]

        ann = Scope("ann")
        assert set(texts("lamp", ann, mode="keyword")) == {  # "lamp" finds "lamps"
            "The harbor lamps were repaired.",
            "Copper signal lamps.",
        }
        assert texts("copper boats", ann, mode="keyword") == ["Copper signal lamps."]
        assert set(texts("harbor", Scope(None, everything=True), mode="keyword")) == {
            "The harbor lamps were repaired.",
            "A harbor of copper boats.",
        }
        boats = TagFilter(any_of=("boats",))
        assert texts("lamps", ann, tags=boats) == ["Copper signal lamps."]
        assert texts("harbor lamps", ann, mode="vector")[0] == "The harbor lamps were repaired."
    finally:
        memory.stop()
