"""Memory records in the store: writing them with their tags, who may see which, and deleting.

Every record carries its owner. A caller sees its own records and the shared ones; an admin
may see every record. Each read path builds its ``WHERE`` from :func:`visible`, so no search,
list, summary or export answers with another user's private records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    delete,
    func,
    insert,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from selftune.memory.tags import keyword_tags, normalize_tags
from selftune.store.schema import (
    MemoryRecord,
    MemorySummary,
    MemoryTag,
    MemoryVector,
    table_of,
)
from selftune.store.users import ensure_user_row

__all__ = [
    "NewRecord",
    "Scope",
    "TagFilter",
    "add_records",
    "count_visible",
    "delete_records",
    "forget_user",
    "interaction_record",
    "matching",
    "question_of",
    "tag_counts",
    "tag_sizes",
    "visible",
]

_RECORDS = table_of(MemoryRecord)
_TAGS = table_of(MemoryTag)


@dataclasses.dataclass(frozen=True)
class Scope:
    """Whose records a read may return: ``user_id``'s own and the shared ones, or with
    ``everything`` (an admin) all of them."""

    user_id: str | None
    everything: bool = False


@dataclasses.dataclass(frozen=True)
class TagFilter:
    """Tags a record must have: any one of ``any_of``, all of ``all_of``, none of ``none_of``;
    ``owner`` keeps one user's records (an admin's view of that user)."""

    any_of: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()
    owner: str | None = None
    kinds: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.any_of or self.all_of or self.none_of or self.owner or self.kinds)


@dataclasses.dataclass(frozen=True)
class NewRecord:
    """A record to write: ``tags`` given by the user or call, ``import_tags`` by the importer;
    ``auto_tags`` keywords are added from the text."""

    user_id: str
    kind: str  # "interaction" | "correction" | "chunk" | "note"
    text: str
    source_id: str | None = None
    source: str | None = None
    title: str | None = None
    shared: bool = False
    tags: Sequence[str] = ()
    import_tags: Sequence[str] = ()


def visible(scope: Scope) -> ColumnElement[bool]:
    """The records ``scope`` may read."""
    if scope.everything:
        return true()
    if scope.user_id is None:
        return MemoryRecord.shared.is_(True)
    return or_(MemoryRecord.user_id == scope.user_id, MemoryRecord.shared.is_(True))


def _tagged(tags: Iterable[str]) -> Any:
    return select(MemoryTag.record_id).where(MemoryTag.tag.in_(list(tags)))


def matching(scope: Scope, tags: TagFilter) -> list[ColumnElement[bool]]:
    """``WHERE`` clauses on :class:`MemoryRecord` for what ``scope`` sees through ``tags``."""
    clauses = [visible(scope)]
    if tags.owner is not None:
        clauses.append(MemoryRecord.user_id == tags.owner)
    if tags.kinds:
        clauses.append(MemoryRecord.kind.in_(tags.kinds))
    if tags.any_of:
        clauses.append(MemoryRecord.id.in_(_tagged(tags.any_of)))
    for tag in tags.all_of:
        clauses.append(MemoryRecord.id.in_(_tagged([tag])))
    if tags.none_of:
        clauses.append(MemoryRecord.id.not_in(_tagged(tags.none_of)))
    return clauses


def add_records(
    connection: Connection, records: Sequence[NewRecord], *, auto_tags: int
) -> list[int]:
    """Insert ``records`` with their tags in the caller's transaction; their ids, in order.
    The keyword index is updated by the database in the same transaction."""
    ids: list[int] = []
    for owner in {record.user_id for record in records}:
        ensure_user_row(connection, owner)
    for record in records:
        row = {
            "user_id": record.user_id,
            "kind": record.kind,
            "source_id": record.source_id,
            "source": record.source,
            "title": record.title,
            "text": record.text,
            "shared": record.shared,
        }
        (record_id,) = connection.execute(insert(_RECORDS), row).inserted_primary_key or (None,)
        assert record_id is not None
        ids.append(int(record_id))
        tags: dict[str, str] = {}
        for tag in normalize_tags(record.tags):
            tags.setdefault(tag, "user")
        for tag in normalize_tags(record.import_tags):
            tags.setdefault(tag, "import")
        for tag in keyword_tags(f"{record.title or ''}\n{record.text}", auto_tags):
            tags.setdefault(tag, "auto")
        if tags:
            connection.execute(
                insert(_TAGS),
                [{"record_id": record_id, "tag": t, "origin": o} for t, o in tags.items()],
            )
    return ids


def delete_records(session: Session, where: Sequence[ColumnElement[bool]]) -> list[int]:
    """Delete the records ``where`` selects, with their tags and vectors, and the summaries
    that covered any of them; the deleted ids (for the search index to drop)."""
    ids = list(session.scalars(select(MemoryRecord.id).where(*where)))
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        session.execute(delete(MemoryTag).where(MemoryTag.record_id.in_(batch)))
        session.execute(delete(MemoryVector).where(MemoryVector.record_id.in_(batch)))
        session.execute(delete(MemoryRecord).where(MemoryRecord.id.in_(batch)))
    if ids:
        gone = set(ids)
        for summary in session.scalars(select(MemorySummary)):
            if gone.intersection(summary.record_ids):
                session.delete(summary)
    return ids


def forget_user(session: Session, user_id: str) -> list[int]:
    """Delete everything memory holds of ``user_id``: records, tags, vectors, the summaries
    written for them and those that covered their records; the deleted record ids."""
    ids = delete_records(session, [MemoryRecord.user_id == user_id])
    session.execute(delete(MemorySummary).where(MemorySummary.user_id == user_id))
    return ids


def tag_counts(
    session: Session, scope: Scope, *, origins: Sequence[str] = (), limit: int | None = None
) -> list[tuple[str, int]]:
    """Tags of the records ``scope`` sees with how many records carry each, most used first."""
    count = func.count(MemoryTag.record_id)
    stmt = (
        select(MemoryTag.tag, count)
        .join(MemoryRecord, MemoryRecord.id == MemoryTag.record_id)
        .where(visible(scope), MemoryTag.origin.in_(origins) if origins else true())
        .group_by(MemoryTag.tag)
        .order_by(count.desc(), MemoryTag.tag)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(tag, int(n)) for tag, n in session.execute(stmt)]


def tag_sizes(session: Session, scope: Scope, tags: Sequence[str]) -> dict[str, int]:
    """How many records ``scope`` sees under each of ``tags``."""
    if not tags:
        return {}
    stmt = (
        select(MemoryTag.tag, func.count())
        .join(MemoryRecord, MemoryRecord.id == MemoryTag.record_id)
        .where(visible(scope), MemoryTag.tag.in_(list(tags)))
        .group_by(MemoryTag.tag)
    )
    return {tag: int(n) for tag, n in session.execute(stmt)}


def count_visible(session: Session, where: Sequence[ColumnElement[bool]]) -> int:
    return int(session.scalar(select(func.count()).select_from(MemoryRecord).where(*where)) or 0)


def question_of(messages: Sequence[dict[str, Any]]) -> str:
    """The text to search memory with: the last user message's text."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts: keep the text ones
                return " ".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
    return ""


def interaction_record(
    *,
    interaction_id: str,
    user_id: str,
    kind: str,
    messages: Sequence[dict[str, Any]],
    answer: str,
    tags: Sequence[str] = (),
) -> NewRecord | None:
    """The memory record of an answered chat (its last question and the answer) or completion
    (prompt and text); None when there is nothing to remember."""
    if kind == "chat":
        question = question_of(messages)
        text = f"Q: {question}\nA: {answer}"
    else:
        question = str(messages[0].get("prompt", "")) if messages else ""
        text = f"{question}{answer}"
    if not question.strip() or not answer.strip():
        return None
    return NewRecord(
        user_id=user_id,
        kind="interaction",
        text=text,
        source=kind,
        source_id=interaction_id,
        tags=tags,
    )
