"""Users appear in the store the first time they are named."""

from __future__ import annotations

from sqlalchemy.orm import Session

from selftune.store.schema import User

__all__ = ["ensure_user"]


def ensure_user(session: Session, user_id: str) -> None:
    """Create the user row if missing, flushed so that rows referring to it can follow."""
    if session.get(User, user_id) is None:
        session.add(User(id=user_id))
        session.flush()
