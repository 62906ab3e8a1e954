"""Writing interactions: one per answered request, on the path of every answer.

A request's answer is not acknowledged before its interaction is committed, so this write is
part of every request's latency; it uses prepared Core statements (about 0.7 ms on 2 cores,
against 2.4 ms through an ORM session).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert

from selftune.store.db import Database
from selftune.store.schema import Conversation, Interaction, TrainingExample, table_of
from selftune.store.users import ensure_user_row

__all__ = ["record_interaction"]

_NEW_CONVERSATION = insert(table_of(Conversation))
_NEW_INTERACTION = insert(table_of(Interaction))
_NEW_EXAMPLE = insert(table_of(TrainingExample))


def record_interaction(
    db: Database, *, user_id: str, example: dict[str, Any] | None = None, **fields: Any
) -> None:
    """Commit one interaction (``fields``: the columns of :class:`Interaction`) in a new
    conversation of ``user_id``, creating the user on first sight.

    ``example`` (``source`` and ``messages``) adds a training example made from the interaction
    in the same transaction: the proxy's upstream answers (data.curation.upstream_example).
    """
    conversation_id = f"conv-{uuid.uuid4().hex}"
    with db.write_connection() as connection:
        ensure_user_row(connection, user_id)
        connection.execute(_NEW_CONVERSATION, {"id": conversation_id, "user_id": user_id})
        connection.execute(
            _NEW_INTERACTION, {"conversation_id": conversation_id, "user_id": user_id, **fields}
        )
        if example is not None:
            row = {"user_id": user_id, "interaction_id": fields["id"], "active": True, **example}
            connection.execute(_NEW_EXAMPLE, row)
