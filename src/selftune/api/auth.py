"""API keys (stored as SHA-256 hashes) and who is calling.

Without ``serve.auth_required`` the server trusts its local callers: the request's ``user`` field
names the user (``anonymous`` if absent) and a valid key, when given, names its owner. Any other
key counts as none: clients built for hosted APIs insist on sending one, and users of llama.cpp's
server give them a placeholder (``sk-no-key-required``). With ``serve.auth_required`` every call
needs a valid key, and its owner is the user; changing what every user is served (promoting,
rolling back, loading adapters) needs an admin key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from typing import TYPE_CHECKING

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from selftune.api.errors import ApiError
from selftune.store.db import Database
from selftune.store.schema import ApiKey, utcnow
from selftune.store.users import ensure_user

if TYPE_CHECKING:  # the CLI creates keys without the server's state
    from selftune.api.state import AppState

__all__ = ["Caller", "caller_of", "create_key", "hash_key", "resolve_caller", "revoke_keys"]

ANONYMOUS = "anonymous"


@dataclasses.dataclass(frozen=True)
class Caller:
    user_id: str | None  # None: no key given on an open server
    authenticated: bool
    admin: bool  # an admin key, or any caller of an open server (it trusts its local callers)

    def user(self, declared: str | None) -> str:
        """The user to record: the key's owner, else the declared ``user`` field."""
        return self.user_id or declared or ANONYMOUS

    def require_admin(self, action: str) -> None:
        """Refuse ``action`` (e.g. "promoting a version") to a caller without an admin key."""
        if not self.admin:
            raise ApiError(
                403,
                f"{action} changes what every user is served and needs an admin key; an "
                "operator creates one with 'selftune keys create --user NAME --admin'",
                type="permission_error",
                code="admin_key_required",
            )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, user_id: str, *, admin: bool = False) -> str:
    """Create a key for ``user_id``; the key is returned once and only its hash is kept."""
    key = "st-" + secrets.token_urlsafe(32)
    with db.write() as session:
        ensure_user(session, user_id)
        session.add(ApiKey(user_id=user_id, key_hash=hash_key(key), prefix=key[:8], admin=admin))
    return key


def revoke_keys(db: Database, user_id: str) -> int:
    with db.write() as session:
        keys = session.scalars(
            select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        ).all()
        for key in keys:
            key.revoked_at = utcnow()
        return len(keys)


# The caller of an open server who sent no key, or one the server does not know.
_UNNAMED = Caller(None, False, admin=True)


def resolve_caller(db: Database, authorization: str | None, required: bool) -> Caller:
    """Who sent ``authorization``. Blocking when a key is given (it reads the store).

    With ``required``, a missing, malformed, unknown or revoked key is a 401. Without it, only a
    valid key counts: anything else (a placeholder such as ``sk-no-key-required``) is no key.
    """
    if not authorization:
        if required:
            raise ApiError(
                401,
                "an API key is required: send 'Authorization: Bearer <key>' "
                "(create one with 'selftune keys create --user NAME')",
                type="authentication_error",
                code="invalid_api_key",
            )
        return _UNNAMED
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        if not required:
            return _UNNAMED
        raise ApiError(
            401,
            "use 'Authorization: Bearer <key>'",
            type="authentication_error",
            code="invalid_api_key",
        )
    with db.read() as session:
        row = session.execute(
            select(ApiKey.user_id, ApiKey.admin).where(
                ApiKey.key_hash == hash_key(key.strip()), ApiKey.revoked_at.is_(None)
            )
        ).first()
    if row is None:
        if not required:
            return _UNNAMED
        raise ApiError(
            401, "invalid or revoked API key", type="authentication_error", code="invalid_api_key"
        )
    owner, admin = row
    return Caller(owner, True, admin=admin or not required)


async def caller_of(state: AppState, authorization: str | None) -> Caller:
    """Who is calling. Without a key nothing is read from the store, so no thread is needed:
    a thread hop costs more than the rest of a short request's preamble."""
    if not authorization:
        return resolve_caller(state.db, authorization, state.settings.serve.auth_required)
    return await run_in_threadpool(
        resolve_caller, state.db, authorization, state.settings.serve.auth_required
    )
