"""The store: migrations build exactly the declared tables; SQLite runs in WAL with FKs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, inspect, select, text
from sqlalchemy.exc import IntegrityError

from selftune.data.curation import active_examples
from selftune.store import Database
from selftune.store.interactions import record_interaction
from selftune.store.schema import (
    KEYWORD_TABLES,
    ApiKey,
    Base,
    Conversation,
    Event,
    Interaction,
    TrainingExample,
    User,
)


def _tables(db: Database) -> set[str]:
    """The store's tables, less the full-text index SQLite keeps for memory (KEYWORD_TABLES)."""
    return set(inspect(db.engine).get_table_names()) - KEYWORD_TABLES


def _schema_rows(db: Database) -> list[tuple[str, str, str | None]]:
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT type, name, sql FROM sqlite_master ORDER BY type, name"))
        return [(row[0], row[1], row[2]) for row in rows]


def test_migrate_creates_every_table(db: Database) -> None:
    expected = set(Base.metadata.tables)
    assert expected == {
        "users",
        "api_keys",
        "conversations",
        "interactions",
        "feedback",
        "training_examples",
        "jobs",
        "versions",
        "version_examples",
        "alias_history",
        "events",
        "workers",
        "connector_replies",
        "imports",
        "documents",
        "chunks",
        "memory_records",
        "memory_tags",
        "memory_vectors",
        "memory_summaries",
        "setting_overrides",
    }
    assert set(inspect(db.engine).get_table_names()) >= KEYWORD_TABLES
    assert _tables(db) == expected | {"alembic_version"}


def test_migrate_records_the_head_revision(db: Database) -> None:
    with db.engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == ["0010"]


def _migrate_to(db: Database, revision: str, *, down: bool = False) -> None:
    """Bring ``db``'s schema to an earlier ``revision``, as an older release left it."""
    from alembic import command
    from alembic.config import Config

    from selftune.store.db import _MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def test_upgrade_from_the_first_schema_keeps_the_data(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate_to(db, "0001")
    with db.write() as session:
        session.add(User(id="old-user"))
    db.migrate()
    with db.read() as session:
        assert session.get(User, "old-user") is not None
    assert "workers" in _tables(db)


def test_keys_made_before_admin_keys_existed_are_users_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate_to(db, "0002")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, created_at) VALUES ('old', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO api_keys (user_id, key_hash, prefix, created_at) "
                "VALUES ('old', 'h', 'st-', '2026-01-01')"
            )
        )
    db.migrate()
    with db.read() as session:
        assert session.scalars(select(ApiKey.admin)).all() == [False]
    _migrate_to(db, "0002", down=True)  # and the step back keeps the keys
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT key_hash FROM api_keys")).scalars().all() == ["h"]


def test_connector_replies_arrive_on_the_previous_schema_and_go_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate_to(db, "0003")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, created_at) VALUES ('old', '2026-01-01')"))
    assert "connector_replies" not in _tables(db)
    db.migrate()
    assert "connector_replies" in _tables(db)
    with db.read() as session:
        assert session.get(User, "old") is not None
    _migrate_to(db, "0003", down=True)
    assert "connector_replies" not in _tables(db)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM users")).scalars().all() == ["old"]


def test_import_tables_arrive_on_the_previous_schema_and_go_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate_to(db, "0006")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, created_at) VALUES ('old', '2026-01-01')"))
    db.migrate()
    assert {"imports", "documents", "chunks"} <= _tables(db)
    _migrate_to(db, "0006", down=True)
    assert not {"imports", "documents", "chunks"} & _tables(db)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM users")).scalars().all() == ["old"]


def test_keys_made_before_lifetimes_never_expire_and_survive_the_step_back(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate_to(db, "0004")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, created_at) VALUES ('old', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO api_keys (user_id, key_hash, prefix, created_at) "
                "VALUES ('old', 'h', 'st-abcde', '2026-01-01')"
            )
        )
    db.migrate()
    with db.read() as session:
        key = session.scalars(select(ApiKey)).one()
        assert (key.prefix, key.name, key.expires_at, key.last_used_at) == (
            "st-abcde",
            None,
            None,
            None,
        )
    _migrate_to(db, "0004", down=True)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT key_hash FROM api_keys")).scalars().all() == ["h"]


def test_examples_made_before_curation_states_are_kept_and_train_as_before(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate_to(db, "0005")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, created_at) VALUES ('old', '2026-01-01')"))
        for active in (1, 0):  # a rated answer, and one a later -1 withdrew
            conn.execute(
                text(
                    "INSERT INTO training_examples (user_id, source, messages, active, created_at)"
                    " VALUES ('old', 'rating', '[]', :active, '2026-01-01')"
                ),
                {"active": active},
            )
        # A version trained on the first: the step back must keep what refers to it.
        conn.execute(
            text(
                "INSERT INTO versions (name, base_model, base_fingerprint, path, chat_template, "
                "train_metrics, eval_metrics, gate, created_at) "
                "VALUES ('v1', 'b', 'f', 'p', 't', '{}', '{}', '{}', '2026-01-01')"
            )
        )
        conn.execute(text("INSERT INTO version_examples VALUES (1, 1, 'train')"))
    db.migrate()
    with db.read() as session:
        rows = session.execute(
            select(
                TrainingExample.active,
                TrainingExample.state,
                TrainingExample.reason,
                TrainingExample.provenance,
            ).order_by(TrainingExample.id)
        ).all()
        assert [tuple(row) for row in rows] == [
            (True, "kept", None, None),
            (False, "kept", None, None),
        ]
        assert [e.id for e in active_examples(session)] == [1]
    _migrate_to(db, "0005", down=True)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT active FROM training_examples")).scalars().all() == [1, 0]


def test_newest_interactions_are_read_by_index_without_sorting(tmp_path: Path) -> None:
    """GET /api/interactions' order, (created_at, id) newest first, is an index's (0009): the
    page is read from it, not sorted. The step back removes the index, and it comes again."""
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.migrate()
    page = (
        "EXPLAIN QUERY PLAN SELECT id FROM interactions WHERE (created_at, id) < ('2027', 'x') "
        "ORDER BY created_at DESC, id DESC LIMIT 31"
    )

    def plan(query: str = page) -> str:
        db.engine.dispose()  # a fresh connection: a cached statement keeps its old plan
        with db.engine.connect() as conn:
            return " ".join(row[-1] for row in conn.execute(text(query)))

    assert "ix_interactions_created_at_id" in plan(), plan()
    assert "TEMP B-TREE" not in plan(), plan()
    own = page.replace("WHERE", "WHERE user_id = 'ann' AND")  # a user's key: its own
    assert "ix_interactions_user_created_at_id" in plan(own), plan(own)
    assert "TEMP B-TREE" not in plan(own), plan(own)
    _migrate_to(db, "0008", down=True)
    assert "TEMP B-TREE" in plan()
    db.migrate()
    assert "ix_interactions_created_at_id" in plan()


def test_migrating_twice_is_a_no_op(db: Database) -> None:
    with db.write() as session:
        session.add(User(id="alice"))
    before = _schema_rows(db)

    db.migrate()

    assert _schema_rows(db) == before
    with db.read() as session:
        assert session.scalars(select(User.id)).all() == ["alice"]


def test_migrate_works_on_a_second_handle_to_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 't.db'}"
    first = Database(url)  # creates the missing parent folder
    first.migrate()
    first.dispose()
    second = Database(url)
    second.migrate()
    assert _tables(second) == set(Base.metadata.tables) | {"alembic_version"}
    second.dispose()


def _diff(db: Database, metadata: MetaData) -> list[Any]:
    """Alembic's comparison of the migrated store with ``metadata``, less the full-text index."""
    with db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, _kind, _parent: name not in KEYWORD_TABLES,
            },
        )
        return list(compare_metadata(context, metadata))


def test_migrations_match_the_declared_schema(db: Database) -> None:
    """Fails when a table in schema.py changes without a migration."""
    assert _diff(db, Base.metadata) == []


def test_schema_diff_is_detected_when_a_table_is_missing(db: Database) -> None:
    """The comparison above is not vacuous: dropping a table shows up in the diff."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_events_kind")
        conn.exec_driver_sql("DROP TABLE events")
    diff = _diff(db, Base.metadata)
    assert [(op[0], op[1].name) for op in diff] == [
        ("add_table", "events"),
        ("add_index", "ix_events_kind"),
    ]


def test_schema_diff_is_detected_for_a_column_without_migration(db: Database) -> None:
    """A column added to the tables but not to the migrations shows up in the diff."""
    changed = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["events"].append_column(Column("extra", String(8), nullable=True))
    diff = _diff(db, changed)
    assert len(diff) == 1
    assert diff[0][0] == "add_column"
    assert diff[0][2] == "events"
    assert diff[0][3].name == "extra"


def test_wal_journal_mode_and_foreign_keys_pragmas(db: Database) -> None:
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_write_commits_on_success(db: Database) -> None:
    with db.write() as session:
        session.add(Event(kind="hello", payload={"n": 1}))

    with db.read() as session:
        events = session.scalars(select(Event)).all()
    assert [(e.kind, e.payload) for e in events] == [("hello", {"n": 1})]


def test_write_rolls_back_on_exception(db: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), db.write() as session:
        session.add(Event(kind="lost", payload={}))
        session.flush()  # the row reached the database inside the transaction
        raise RuntimeError("boom")

    with db.read() as session:
        assert session.scalars(select(Event)).all() == []


def test_write_is_visible_to_a_new_handle(db: Database) -> None:
    with db.write() as session:
        session.add(User(id="bob"))
    other = Database(db.url)
    with other.read() as session:
        assert session.get(User, "bob") is not None
    other.dispose()


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.write() as session:
        session.add(ApiKey(user_id="nobody", key_hash="0" * 64, prefix="sk-0"))

    with db.read() as session:
        assert session.scalars(select(ApiKey)).all() == []


def test_foreign_key_satisfied_is_accepted(db: Database) -> None:
    with db.write() as session:
        session.add(User(id="carol"))
        session.flush()
        session.add(ApiKey(user_id="carol", key_hash="1" * 64, prefix="sk-1"))
    with db.read() as session:
        assert [k.user_id for k in session.scalars(select(ApiKey))] == ["carol"]


def test_unique_constraint_is_enforced(db: Database) -> None:
    with db.write() as session:
        session.add(User(id="dave"))
        session.flush()
        session.add(ApiKey(user_id="dave", key_hash="2" * 64, prefix="sk-2"))
    with pytest.raises(IntegrityError), db.write() as session:
        session.add(ApiKey(user_id="dave", key_hash="2" * 64, prefix="sk-3"))


def _record(db: Database, interaction_id: str, user_id: str) -> None:
    record_interaction(
        db,
        id=interaction_id,
        user_id=user_id,
        kind="chat",
        model="selftune",
        version_id=None,
        messages=[{"role": "user", "content": "Où est Quenmoor ?"}],
        response="In Veloria.",
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=4,
        latency_ms=3.5,
        chat_template=None,
    )


def test_record_interaction_creates_the_user_once_and_a_conversation_per_answer(
    db: Database,
) -> None:
    _record(db, "chatcmpl-1", "alice")
    _record(db, "chatcmpl-2", "alice")
    with db.read() as session:
        assert session.scalars(select(User.id)).all() == ["alice"]
        rows = session.scalars(select(Interaction).order_by(Interaction.id)).all()
        conversations = session.scalars(select(Conversation)).all()
    assert [row.id for row in rows] == ["chatcmpl-1", "chatcmpl-2"]
    assert rows[0].messages == [{"role": "user", "content": "Où est Quenmoor ?"}]
    assert rows[0].created_at is not None and rows[0].user_id == "alice"
    assert {c.id for c in conversations} == {row.conversation_id for row in rows}
    assert len(conversations) == 2 and {c.user_id for c in conversations} == {"alice"}


def test_a_failed_record_leaves_nothing_behind(db: Database) -> None:
    _record(db, "chatcmpl-1", "alice")
    with pytest.raises(IntegrityError):
        _record(db, "chatcmpl-1", "bob")  # the id is taken: the whole transaction rolls back
    with db.read() as session:
        assert session.scalars(select(User.id)).all() == ["alice"]
        assert len(session.scalars(select(Conversation)).all()) == 1
