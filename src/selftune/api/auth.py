"""API keys (stored as SHA-256 hashes) and who is calling.

Without ``serve.auth_required`` the server trusts its local callers: the request's ``user`` field
names the user (``anonymous`` if absent) and a valid key, when given, names its owner. Any other
key counts as none: clients built for hosted APIs insist on sending one, and users of llama.cpp's
server give them a placeholder (``sk-no-key-required``). With ``serve.auth_required`` every call
needs a valid key, and its owner is the user; changing what every user is served (promoting,
rolling back, loading adapters) needs an admin key.

A key may expire (``expires_at``); an expired or revoked key is refused like an unknown one.
Invalid keys are counted per client address (:class:`FailedAttempts`): past
``serve.auth_failures_per_minute`` of them the address gets 429 until the oldest is a minute
old, so guessing keys goes no faster than that.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from selftune.api.errors import ApiError
from selftune.store.db import Database
from selftune.store.schema import ApiKey, as_utc, utcnow
from selftune.store.users import ensure_user

if TYPE_CHECKING:  # the CLI creates keys without the server's state
    from selftune.api.state import AppState

__all__ = [
    "PREFIX_LENGTH",
    "Caller",
    "FailedAttempts",
    "caller_of",
    "create_key",
    "hash_key",
    "resolve_caller",
    "revoke_keys",
]

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
# "st-" and 9 random characters (54 bits): enough to name one key among many. Keys made before
# the prefix grew have 8 characters; a prefix that names several keys is refused (409).
PREFIX_LENGTH = 12
# How stale ``last_used_at`` may get: it is written at most this often per key.
LAST_USED_EVERY = dt.timedelta(minutes=1)
_NEW_KEY = "ask an admin for a new one ('selftune keys create --user NAME' or POST /api/keys)"


@dataclasses.dataclass(frozen=True)
class Caller:
    user_id: str | None  # None: no key given on an open server
    authenticated: bool
    admin: bool  # an admin key, or any caller of an open server (it trusts its local callers)

    def user(self, declared: str | None) -> str:
        """The user to record: the key's owner, else the declared ``user`` field."""
        return self.user_id or declared or ANONYMOUS

    def reads(self, user: str | None) -> str | Literal[False] | None:
        """Whose records this caller reads when it asks for ``user``'s (None: not naming one):
        an admin (or an open server's caller) that user's, or everyone's (None); a user's key
        its own only, and nothing (False) when it names another user, as if there were none."""
        if self.admin:
            return user
        if user not in (None, self.user_id):
            return False
        return self.user_id

    def require_admin(self, action: str) -> None:
        """Refuse ``action`` (e.g. "promoting a version") to a caller without an admin key."""
        if not self.admin:
            raise ApiError(
                403,
                f"{action} needs an admin key; an operator creates one with "
                "'selftune keys create --user NAME --admin'",
                type="permission_error",
                code="admin_key_required",
            )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    db: Database,
    user_id: str,
    *,
    admin: bool = False,
    name: str | None = None,
    expires_at: dt.datetime | None = None,
) -> str:
    """Create a key for ``user_id``; the key is returned once and only its hash is kept. Its
    first :data:`PREFIX_LENGTH` characters name it in listings (``selftune keys list``)."""
    key = "st-" + secrets.token_urlsafe(32)
    with db.write() as session:
        ensure_user(session, user_id)
        session.add(
            ApiKey(
                user_id=user_id,
                key_hash=hash_key(key),
                prefix=key[:PREFIX_LENGTH],
                admin=admin,
                name=name,
                expires_at=expires_at,
            )
        )
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
            select(
                ApiKey.id,
                ApiKey.user_id,
                ApiKey.admin,
                ApiKey.revoked_at,
                ApiKey.expires_at,
                ApiKey.last_used_at,
            ).where(ApiKey.key_hash == hash_key(key.strip()))
        ).first()
    now = utcnow()
    refusal = None
    if row is None:
        refusal = "invalid API key: no key of this server; " + _NEW_KEY
    elif row.revoked_at is not None:
        refusal = "this API key was revoked; " + _NEW_KEY
    elif row.expires_at is not None and as_utc(row.expires_at) <= now:
        refusal = (
            f"this API key expired at {as_utc(row.expires_at).isoformat(timespec='seconds')}; "
            f"{_NEW_KEY}, or have it rotated before it expires ('selftune keys rotate')"
        )
    if refusal is not None:
        if not required:
            return _UNNAMED
        raise ApiError(401, refusal, type="authentication_error", code="invalid_api_key")
    assert row is not None
    if row.last_used_at is None or now - as_utc(row.last_used_at) >= LAST_USED_EVERY:
        _mark_used(db, row.id, now)
    return Caller(row.user_id, True, admin=row.admin or not required)


def _mark_used(db: Database, key_id: int, now: dt.datetime) -> None:
    """Record that a key was used: one small write a minute per key at most. A store too busy
    to take it (SQLite locked) costs the timestamp, never the request."""
    try:
        with db.write_connection() as connection:
            connection.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    except OperationalError as exc:
        log.warning("could not record that API key %d was used: %s", key_id, exc)


class FailedAttempts:
    """Invalid keys per client address in the last minute, in this process's memory.

    An address that sent ``limit`` of them is refused (429) until the oldest is a minute old,
    whatever key it sends then: a key that happens to be right is not let through, or guessing
    would go on at full speed. Other addresses are not affected. ``limit`` 0: no limit.
    """

    WINDOW = 60.0
    _MOST_ADDRESSES = 10_000  # past this many, addresses without a recent failure are forgotten

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.clock = limit, clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> collections.deque[float] | None:
        failures = self._failures.get(client)
        while failures and failures[0] <= now - self.WINDOW:
            failures.popleft()
        return failures

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again; None when it may now."""
        if not self.limit:
            return None
        with self._lock:
            now = self.clock()
            failures = self._recent(client, now)
            if not failures or len(failures) < self.limit:
                return None
            return max(1, math.ceil(failures[0] + self.WINDOW - now))

    def record(self, client: str) -> None:
        if not self.limit:
            return
        with self._lock:
            now = self.clock()
            if len(self._failures) >= self._MOST_ADDRESSES:
                for address in list(self._failures):
                    if not self._recent(address, now):
                        del self._failures[address]
            failures = self._failures.setdefault(client, collections.deque())
            failures.append(now)
            while len(failures) > self.limit:  # more than the limit tells nothing more
                failures.popleft()


async def caller_of(state: AppState, authorization: str | None, client: str = "") -> Caller:
    """Who is calling, from ``client`` (its address). Without a key nothing is read from the
    store, so no thread is needed: a thread hop costs more than the rest of a short request's
    preamble. Where keys are required, an address that sent too many invalid ones is refused
    before its key is looked at."""
    required = state.settings.serve.auth_required
    if not authorization:
        return resolve_caller(state.db, authorization, required)
    if not required:
        return await run_in_threadpool(resolve_caller, state.db, authorization, required)
    wait = state.failed_keys.retry_after(client)
    if wait is not None:
        raise ApiError(
            429,
            f"too many invalid API keys from this address; try again in {wait} s with a valid "
            "key (see 'selftune keys list')",
            type="rate_limit_error",
            code="too_many_invalid_keys",
            headers={"Retry-After": str(wait)},
        )
    try:
        return await run_in_threadpool(resolve_caller, state.db, authorization, required)
    except ApiError:
        state.failed_keys.record(client)
        raise
