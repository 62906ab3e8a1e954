"""The same store on PostgreSQL. Runs when SELFTUNE_TEST_POSTGRES_URL names an empty database,
e.g. postgresql+psycopg://selftune@127.0.0.1:55432/selftune_test (see README, Development)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from selftune.registry import versions as registry
from selftune.store.db import Database
from selftune.store.interactions import record_interaction
from selftune.store.schema import Base, Interaction, User, Version
from selftune.training import jobs

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
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
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
