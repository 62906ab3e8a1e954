"""The serving alias: promote, roll back, an append-only history; version names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from selftune.registry.versions import (
    SERVING,
    AliasMoved,
    RegistryError,
    ServingTarget,
    alias_stack,
    next_version_name,
    promote,
    promote_gated,
    rollback,
    rollback_to_base,
    serving_target,
    version_summary,
)
from selftune.store import Database
from selftune.store.schema import AliasChange, Event, Version

Row = tuple[Any, ...]


def _add_version(
    db: Database, name: str, *, passed: bool = True, parent_id: int | None = None
) -> int:
    with db.write() as session:
        version = Version(
            name=name,
            base_model="tiny",
            base_fingerprint="f" * 16,
            parent_id=parent_id,
            path=f"/versions/{name}",
            chat_template=f"template-of-{name}",
            gate={"passed": passed, "reason": "fixture gate"},
        )
        session.add(version)
        session.flush()
        return version.id


def _promote(db: Database, version_id: int) -> AliasChange:
    with db.write() as session:
        return promote(session, version_id, actor="test", reason="promote in test")


def _rollback(db: Database, to_version_id: int | None = None) -> AliasChange:
    with db.write() as session:
        return rollback(
            session, actor="test", reason="rollback in test", to_version_id=to_version_id
        )


def _serving(db: Database) -> int | None:
    with db.read() as session:
        return serving_target(session).version_id


def _stack(db: Database) -> list[int | None]:
    with db.read() as session:
        return alias_stack(session)


def _history(db: Database) -> list[Row]:
    with db.read() as session:
        rows = session.scalars(select(AliasChange).order_by(AliasChange.id)).all()
        return [
            (
                r.id,
                r.alias,
                r.version_id,
                r.previous_version_id,
                r.action,
                r.reason,
                r.actor,
                r.created_at,
            )
            for r in rows
        ]


def test_fresh_store_serves_the_base_model(db: Database) -> None:
    with db.read() as session:
        assert alias_stack(session) == [None]
        assert serving_target(session) == ServingTarget(None, "base", None, None)


def test_promote_and_roll_back_step_by_step(db: Database) -> None:
    v1 = _add_version(db, "v1")
    v2 = _add_version(db, "v2", parent_id=v1)

    change = _promote(db, v1)
    assert (change.action, change.version_id, change.previous_version_id) == ("promote", v1, None)
    assert _serving(db) == v1

    change = _promote(db, v2)
    assert (change.action, change.version_id, change.previous_version_id) == ("promote", v2, v1)
    assert _serving(db) == v2
    assert _stack(db) == [None, v1, v2]

    change = _rollback(db)
    assert (change.action, change.version_id, change.previous_version_id) == ("rollback", v1, v2)
    assert _serving(db) == v1

    change = _rollback(db)
    assert (change.action, change.version_id, change.previous_version_id) == ("rollback", None, v1)
    assert _serving(db) is None
    assert _stack(db) == [None]

    with pytest.raises(RegistryError, match="nothing to roll back"):
        _rollback(db)
    assert _serving(db) is None


def test_rollback_with_nothing_promoted_is_refused(db: Database) -> None:
    with pytest.raises(RegistryError, match="nothing to roll back"):
        _rollback(db)
    assert _history(db) == []


def test_promote_and_rollback_record_events(db: Database) -> None:
    v1 = _add_version(db, "v1")
    _promote(db, v1)
    _rollback(db)
    with db.read() as session:
        events = session.scalars(select(Event).order_by(Event.id)).all()
        assert [(e.kind, e.payload) for e in events] == [
            ("promote", {"version_id": v1, "previous": None, "actor": "test"}),
            ("rollback", {"version_id": None, "previous": v1, "actor": "test"}),
        ]


def test_promoting_a_version_that_failed_its_gate_is_refused(db: Database) -> None:
    bad = _add_version(db, "v1", passed=False)
    with pytest.raises(RegistryError, match=r"did not pass its gate \(fixture gate\)"):
        _promote(db, bad)
    assert _serving(db) is None
    assert _history(db) == []


def test_promoting_an_unevaluated_version_is_refused(db: Database) -> None:
    with db.write() as session:
        version = Version(
            name="v1", base_model="tiny", base_fingerprint="f", path="/v1", chat_template="t"
        )
        session.add(version)
        session.flush()
        version_id = version.id
    with pytest.raises(RegistryError, match="not evaluated"):
        _promote(db, version_id)


def test_promoting_an_unknown_version_is_refused(db: Database) -> None:
    with pytest.raises(RegistryError, match="no version with id 42"):
        _promote(db, 42)


def test_promoting_the_served_version_is_refused(db: Database) -> None:
    v1 = _add_version(db, "v1")
    _promote(db, v1)
    with pytest.raises(RegistryError, match="already being served"):
        _promote(db, v1)
    assert len(_history(db)) == 1
    assert _serving(db) == v1


def test_a_gated_promotion_happens_while_the_alias_is_where_the_gate_saw_it(db: Database) -> None:
    v1, v2 = _add_version(db, "v1"), _add_version(db, "v2")
    with db.write() as session:
        promote_gated(session, v1, None, actor="job 1", reason="gate passed")
    with db.write() as session:
        promote_gated(session, v2, v1, actor="job 2", reason="gate passed")
    assert _stack(db) == [None, v1, v2]


def test_a_gated_promotion_does_not_override_a_change_made_meanwhile(db: Database) -> None:
    """A job gated v2 against v1; during the job someone rolled back to the base. The rollback
    stands: v2 is not served, and the refusal says what happened and what to do."""
    v1, v2 = _add_version(db, "v1"), _add_version(db, "v2")
    _promote(db, v1)
    _rollback(db)
    history = _history(db)
    with pytest.raises(AliasMoved) as refused, db.write() as session:
        promote_gated(session, v2, v1, actor="job 2", reason="gate passed")
    message = str(refused.value)
    assert "from v1 to base" in message and "POST /api/versions/v2/promote" in message
    assert _history(db) == history
    assert _serving(db) is None
    _promote(db, v2)  # the version stays promotable by hand
    assert _serving(db) == v2


def test_rollback_to_a_named_earlier_version(db: Database) -> None:
    v1, v2, v3 = (_add_version(db, name) for name in ("v1", "v2", "v3"))
    for version_id in (v1, v2, v3):
        _promote(db, version_id)

    change = _rollback(db, to_version_id=v1)

    assert (change.action, change.version_id, change.previous_version_id) == ("rollback", v1, v3)
    assert _serving(db) == v1
    assert _stack(db) == [None, v1]
    _rollback(db)
    assert _serving(db) is None


def test_rollback_to_a_never_served_version_is_refused(db: Database) -> None:
    v1, v2, never = (_add_version(db, name) for name in ("v1", "v2", "v3"))
    _promote(db, v1)
    _promote(db, v2)
    before = _history(db)

    with pytest.raises(RegistryError, match="was not served before"):
        _rollback(db, to_version_id=never)
    with pytest.raises(RegistryError, match="was not served before"):
        _rollback(db, to_version_id=v2)  # the current one is not "earlier"

    assert _history(db) == before
    assert _serving(db) == v2


def test_rollback_to_a_version_that_was_rolled_back_past_is_refused(db: Database) -> None:
    v1, v2 = _add_version(db, "v1"), _add_version(db, "v2")
    _promote(db, v1)
    _promote(db, v2)
    _rollback(db)  # back to v1; v2 is no longer on the stack
    with pytest.raises(RegistryError, match="was not served before"):
        _rollback(db, to_version_id=v2)


def test_promoting_again_after_a_rollback(db: Database) -> None:
    v1, v2 = _add_version(db, "v1"), _add_version(db, "v2")
    _promote(db, v1)
    _promote(db, v2)
    _rollback(db)
    _promote(db, v2)
    assert _stack(db) == [None, v1, v2]
    _rollback(db)
    assert _serving(db) == v1


def test_alias_history_is_append_only(db: Database) -> None:
    v1, v2 = _add_version(db, "v1"), _add_version(db, "v2")
    steps: list[Callable[[], AliasChange]] = [
        lambda: _promote(db, v1),
        lambda: _promote(db, v2),
        lambda: _rollback(db),
        lambda: _promote(db, v2),
        lambda: _rollback(db),
        lambda: _rollback(db),
    ]
    history = _history(db)
    assert history == []
    for step in steps:
        step()
        now = _history(db)
        assert len(now) == len(history) + 1
        assert now[: len(history)] == history  # earlier rows are unchanged
        assert now[-1][1] == SERVING
        assert now[-1][5] == f"{now[-1][4]} in test"  # reason matches the action
        assert now[-1][6] == "test"
        history = now
    assert [row[4] for row in history] == [
        "promote",
        "promote",
        "rollback",
        "promote",
        "rollback",
        "rollback",
    ]
    assert _serving(db) is None


def test_rollback_to_base_from_several_versions_up(db: Database) -> None:
    v1, v2 = _add_version(db, "v1"), _add_version(db, "v2")
    _promote(db, v1)
    _promote(db, v2)
    with db.write() as session:
        change = rollback_to_base(session, actor="test", reason="serve the base")
    assert (change.action, change.version_id, change.previous_version_id) == ("rollback", None, v2)
    assert _stack(db) == [None]
    assert _serving(db) is None
    # Nothing is left to roll back, and the base cannot be "rolled back to" twice.
    with pytest.raises(RegistryError, match="nothing to roll back"):
        _rollback(db)
    with db.write() as session, pytest.raises(RegistryError, match="already being served"):
        rollback_to_base(session, actor="test", reason="again")
    _promote(db, v1)  # and versions can be promoted again afterwards
    assert _stack(db) == [None, v1]


def test_serving_target_names_the_version_and_its_path(db: Database) -> None:
    v1 = _add_version(db, "v1")
    _promote(db, v1)
    with db.read() as session:
        target = serving_target(session)
    assert target == ServingTarget(v1, "v1", Path("/versions/v1"), "template-of-v1")


def test_next_version_name(db: Database, tmp_path: Path) -> None:
    versions_dir = tmp_path / "versions"
    with db.read() as session:
        assert next_version_name(session, versions_dir) == "v1"

    versions_dir.mkdir()
    (versions_dir / "v1").mkdir()  # a leftover directory without a row
    (versions_dir / "v2").mkdir()
    with db.read() as session:
        assert next_version_name(session, versions_dir) == "v3"

    _add_version(db, "v1")  # id 1
    with db.read() as session:
        assert next_version_name(session, versions_dir) == "v3"

    _add_version(db, "v5")  # id 2; the name v5 is taken in the store
    (versions_dir / "v3").mkdir()
    (versions_dir / "v4").mkdir()
    with db.read() as session:
        # one past id 2 is v3 (dir exists), v4 (dir exists), v5 (row exists): v6
        assert next_version_name(session, versions_dir) == "v6"


def test_version_summary(db: Database) -> None:
    v1 = _add_version(db, "v1")
    v2 = _add_version(db, "v2", parent_id=v1)
    with db.read() as session:
        version = session.get(Version, v2)
        assert version is not None
        summary = version_summary(session, version, serving_id=v2)
    assert summary["name"] == "v2"
    assert summary["parent"] == "v1"
    assert summary["serving"] is True
    assert summary["trained_on"] == []
    assert summary["gate"] == {"passed": True, "reason": "fixture gate"}
