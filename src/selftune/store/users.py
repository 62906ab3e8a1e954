"""Users appear in the store the first time they are named."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from selftune.store.schema import User, table_of

__all__ = ["ensure_user", "ensure_user_row"]

_USERS = table_of(User)
# One statement that adds the user unless it exists, where the database has one.
_INSERT_IF_NEW = {
    "sqlite": sqlite.insert(_USERS).on_conflict_do_nothing(),
    "postgresql": postgresql.insert(_USERS).on_conflict_do_nothing(),
}


def ensure_user(session: Session, user_id: str) -> None:
    """Create the user row if missing, at once, so that rows referring to it can follow."""
    ensure_user_row(session.connection(), user_id)


def ensure_user_row(connection: Connection, user_id: str) -> None:
    """:func:`ensure_user` for a Core connection (see ``Database.write_connection``)."""
    statement = _INSERT_IF_NEW.get(connection.dialect.name)
    if statement is not None:
        connection.execute(statement, {"id": user_id})
    elif connection.scalar(select(_USERS.c.id).where(_USERS.c.id == user_id)) is None:
        connection.execute(insert(_USERS), {"id": user_id})
