"""Versions and the serving alias: register, list, promote, roll back.

The alias history is append-only. The current target is found by replaying it: a promotion
pushes a version, a rollback pops back to what was served before. ``None`` stands for the bare
base model.

Every change reads the history and appends to it in one transaction, and the changes are
serialized (:func:`_lock_alias`), so two at once cannot both build on the same history: the
second sees the first, and refuses or records it as what it replaced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, false, func, select
from sqlalchemy.orm import Session

from selftune.store.schema import MAX_ID, AliasChange, Event, Version, VersionExample

__all__ = [
    "SERVING",
    "AliasMoved",
    "RegistryError",
    "ServingTarget",
    "alias_stack",
    "next_version_name",
    "promote",
    "promote_gated",
    "rollback",
    "rollback_to_base",
    "serving_target",
    "version_ref",
    "version_summary",
]

SERVING = "serving"

# PostgreSQL advisory lock key of the alias history: any fixed 64-bit number no other lock uses.
_ALIAS_LOCK_KEY = 0x5E1F_7E11_A11A5


def version_ref(ref: str) -> ColumnElement[bool]:
    """The condition that selects the version ``ref`` names: by id (ASCII digits: "²" is a
    digit to ``str.isdigit``, not to ``int``) or else by name. An id beyond the store's
    integer range selects nothing."""
    if ref.isascii() and ref.isdigit():
        number = int(ref)
        return Version.id == number if number <= MAX_ID else false()
    return Version.name == ref


class RegistryError(ValueError):
    """A promotion or rollback was refused; the message says why."""


class AliasMoved(RegistryError):
    """What is served changed after a job's gate compared its candidate with it."""


@dataclasses.dataclass(frozen=True)
class ServingTarget:
    version_id: int | None
    name: str  # the version name, or "base"
    path: Path | None
    chat_template: str | None


def alias_stack(session: Session, alias: str = SERVING) -> list[int | None]:
    """The alias's targets, oldest first; the last element is what is served now."""
    stack: list[int | None] = [None]
    rows = session.scalars(
        select(AliasChange).where(AliasChange.alias == alias).order_by(AliasChange.id)
    )
    for row in rows:
        if row.action == "promote":
            stack.append(row.version_id)
        else:  # rollback: pop back down to the version it names
            while len(stack) > 1 and stack[-1] != row.version_id:
                stack.pop()
            if stack[-1] != row.version_id:
                stack.append(row.version_id)
    return stack


def _lock_alias(session: Session) -> list[int | None]:
    """Hold the alias history until the transaction ends, and return its stack.

    SQLite needs no lock: its write transactions begin with ``BEGIN IMMEDIATE`` and run one at
    a time. PostgreSQL runs them side by side, so a transaction-scoped advisory lock queues
    every change behind the one before (released at commit or rollback).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_ALIAS_LOCK_KEY)))
    return alias_stack(session)


def _name(session: Session, version_id: int | None) -> str:
    version = session.get(Version, version_id) if version_id is not None else None
    return version.name if version is not None else "base"


def serving_target(session: Session, alias: str = SERVING) -> ServingTarget:
    version_id = alias_stack(session, alias)[-1]
    if version_id is None:
        return ServingTarget(None, "base", None, None)
    version = session.get(Version, version_id)
    assert version is not None
    return ServingTarget(version.id, version.name, Path(version.path), version.chat_template)


def next_version_name(session: Session, versions_dir: Path) -> str:
    """``v<N>``: one past the highest id, skipping names whose directory already exists."""
    number = (session.scalar(select(func.max(Version.id))) or 0) + 1
    while (versions_dir / f"v{number}").exists() or session.scalar(
        select(Version.id).where(Version.name == f"v{number}")
    ):
        number += 1
    return f"v{number}"


def _record(
    session: Session, action: str, target: int | None, previous: int | None, reason: str, actor: str
) -> AliasChange:
    change = AliasChange(
        alias=SERVING,
        version_id=target,
        previous_version_id=previous,
        action=action,
        reason=reason,
        actor=actor,
    )
    session.add(change)
    session.add(
        Event(kind=action, payload={"version_id": target, "previous": previous, "actor": actor})
    )
    session.flush()
    return change


def promote(session: Session, version_id: int, *, actor: str, reason: str) -> AliasChange:
    """Point the serving alias at ``version_id``; only a version that passed its gate."""
    version = _gated_version(session, version_id)
    return _promote(session, version, _lock_alias(session)[-1], actor=actor, reason=reason)


def promote_gated(
    session: Session, version_id: int, gated_against: int | None, *, actor: str, reason: str
) -> AliasChange:
    """Promote a job's candidate only if what is served is still what its gate compared it
    with (``gated_against``; ``None``: the base). Otherwise raise :class:`AliasMoved`: someone
    promoted or rolled back by hand during the job, and that choice stands."""
    version = _gated_version(session, version_id)
    current = _lock_alias(session)[-1]
    if current != gated_against:
        raise AliasMoved(
            f"the served version changed from {_name(session, gated_against)} to "
            f"{_name(session, current)} while {version.name} was being evaluated against it, so "
            f"{version.name} was not promoted; promote it by hand if it should be served "
            f"(POST /api/versions/{version.name}/promote)"
        )
    return _promote(session, version, current, actor=actor, reason=reason)


def _gated_version(session: Session, version_id: int) -> Version:
    version = session.get(Version, version_id)
    if version is None:
        raise RegistryError(f"no version with id {version_id}")
    if not version.gate.get("passed"):
        why = version.gate.get("reason", "not evaluated")
        raise RegistryError(
            f"version {version.name} did not pass its gate ({why}); only gated versions are served"
        )
    return version


def _promote(
    session: Session, version: Version, current: int | None, *, actor: str, reason: str
) -> AliasChange:
    """Record ``version`` promoted over ``current``; the caller holds the alias lock."""
    if current == version.id:
        raise RegistryError(f"version {version.name} is already being served")
    return _record(session, "promote", version.id, current, reason, actor)


def rollback(
    session: Session, *, actor: str, reason: str, to_version_id: int | None = None
) -> AliasChange:
    """Serve what was served before the current version (or a named earlier version)."""
    stack = _lock_alias(session)
    if len(stack) < 2:
        raise RegistryError("nothing to roll back: the base model is being served")
    current = stack[-1]
    if to_version_id is None:
        target = stack[-2]
    else:
        if to_version_id not in stack[:-1]:
            raise RegistryError(
                f"version {to_version_id} was not served before; roll back only to an earlier "
                "target, or promote it"
            )
        target = to_version_id
    return _record(session, "rollback", target, current, reason, actor)


def rollback_to_base(session: Session, *, actor: str, reason: str) -> AliasChange:
    """Serve the bare base model, however many versions were promoted on top of it.

    The base is the bottom of every alias stack, so this is a rollback to ``None``: replaying the
    history pops back to it, and a later plain rollback has nothing left to undo.
    """
    current = _lock_alias(session)[-1]
    if current is None:
        raise RegistryError("the base model is already being served")
    return _record(session, "rollback", None, current, reason, actor)


def version_summary(session: Session, version: Version, serving_id: int | None) -> dict[str, Any]:
    """The public view of a version: lineage, figures, the gate's decision."""
    roles = session.execute(
        select(VersionExample.example_id, VersionExample.role).where(
            VersionExample.version_id == version.id
        )
    ).all()
    parent = session.get(Version, version.parent_id) if version.parent_id else None
    return {
        "id": version.id,
        "name": version.name,
        "base_model": version.base_model,
        "parent": parent.name if parent else "base",
        "parent_id": version.parent_id,
        "job_id": version.job_id,
        "created_at": version.created_at.isoformat(),
        "serving": version.id == serving_id,
        "trained_on": sorted(e for e, role in roles if role in ("train", "replay")),
        "replayed": sorted(e for e, role in roles if role == "replay"),
        "held_out": sorted(e for e, role in roles if role == "heldout"),
        "train_metrics": version.train_metrics,
        "eval": version.eval_metrics,
        "gate": version.gate,
    }
