"""Replies that connectors (``selftune.connectors``) wrote: queued for approval, approved,
posted or rejected. A person decides through ``/api/connectors/replies``; the connector posts
the approved ones at its next run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from selftune.store.db import Database
from selftune.store.schema import ConnectorReply, Event, utcnow

__all__ = [
    "STATUSES",
    "ReplyError",
    "answered",
    "approved_replies",
    "decide",
    "list_replies",
    "mark_posted",
    "reply_view",
]

STATUSES = ("pending", "approved", "posted", "rejected")


class ReplyError(ValueError):
    """A decision on a reply was refused; the message says why."""


def answered(db: Database, connector: str, item_ids: Iterable[str]) -> set[str]:
    """The ids among ``item_ids`` that ``connector`` has written a reply to already."""
    wanted = list(item_ids)
    if not wanted:
        return set()
    with db.read() as session:
        return set(
            session.scalars(
                select(ConnectorReply.item_id).where(
                    ConnectorReply.connector == connector, ConnectorReply.item_id.in_(wanted)
                )
            )
        )


def list_replies(
    db: Database, status: str | None = "pending", connector: str | None = None, limit: int = 100
) -> list[ConnectorReply]:
    query = select(ConnectorReply).order_by(ConnectorReply.id).limit(limit)
    if status is not None:
        query = query.where(ConnectorReply.status == status)
    if connector is not None:
        query = query.where(ConnectorReply.connector == connector)
    with db.read() as session:
        return list(session.scalars(query))


def approved_replies(db: Database, connector: str) -> list[ConnectorReply]:
    return list_replies(db, "approved", connector, limit=1000)


def decide(db: Database, reply_id: int, decision: str, actor: str) -> ConnectorReply:
    """Approve (``approved``) or reject (``rejected``) a pending reply."""
    assert decision in ("approved", "rejected")
    with db.write() as session:
        reply = session.get(ConnectorReply, reply_id, with_for_update=True)
        if reply is None:
            raise LookupError(f"no connector reply {reply_id}")
        if reply.status != "pending":
            raise ReplyError(
                f"reply {reply_id} is {reply.status}; only pending replies are approved or rejected"
            )
        reply.status, reply.decided_at = decision, utcnow()
        session.add(
            Event(
                kind=f"connector_reply_{decision}",
                payload={"reply_id": reply_id, "connector": reply.connector, "actor": actor},
            )
        )
        return reply


def mark_posted(db: Database, reply_id: int, posted_id: str) -> None:
    with db.write() as session:
        reply = session.get(ConnectorReply, reply_id, with_for_update=True)
        assert reply is not None
        reply.status, reply.posted_id = "posted", posted_id
        session.add(
            Event(
                kind="connector_reply_posted",
                payload={"reply_id": reply_id, "connector": reply.connector, "posted": posted_id},
            )
        )


def reply_view(reply: ConnectorReply) -> dict[str, Any]:
    return {
        "id": reply.id,
        "connector": reply.connector,
        "status": reply.status,
        "video_id": reply.video_id,
        "item_id": reply.item_id,
        "user_id": reply.user_id,
        "interaction_id": reply.interaction_id,
        "chain": reply.chain,
        "reply": reply.reply,
        "posted_id": reply.posted_id,
        "created_at": reply.created_at.isoformat(),
    }
