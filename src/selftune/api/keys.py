"""Managing API keys: list, create, revoke and rotate them, from the CLI or ``/api/keys``.

A key is named by its prefix (its first characters, shown by ``selftune keys list``), never by
the key or its hash. A prefix may be shortened while it names one key; one that names several
is refused (409) rather than acting on the wrong key. Admins manage every key; a user's key
lists and revokes only its owner's keys (revoking only takes access away). Creating and
rotating need an admin key: a stolen user key must not be able to make itself a successor.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import PREFIX_LENGTH, Caller, create_key, hash_key
from selftune.api.deps import CurrentCaller, State, admin_caller
from selftune.api.errors import ApiError
from selftune.api.responses import ERRORS
from selftune.api.schemas import RequestModel
from selftune.store.db import Database
from selftune.store.schema import ApiKey, as_utc, utcnow

__all__ = [
    "KeyCreated",
    "KeyList",
    "KeyView",
    "expiry",
    "find_key",
    "list_keys",
    "revoke_key",
    "rotate_key",
    "router",
]

# The shortest prefix that may name a key: as long as the prefixes of the first keys were.
MIN_PREFIX = 8


class KeyView(BaseModel):
    """A key as listings show it: never the key, nor its hash."""

    model_config = ConfigDict(extra="forbid")
    prefix: str
    user: str
    admin: bool
    name: str | None
    status: str = Field(description="active, expired or revoked")
    created_at: str
    expires_at: str | None
    last_used_at: str | None = Field(description="to the minute: it is written once a minute")
    revoked_at: str | None


class KeyList(BaseModel):
    data: list[KeyView]


class KeyCreated(KeyView):
    key: str = Field(description="The key itself, shown this once: only its hash is stored")


def _time(value: dt.datetime | None) -> str | None:
    return as_utc(value).isoformat(timespec="seconds") if value else None


def key_view(key: ApiKey, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    if key.revoked_at is not None:
        status = "revoked"
    elif key.expires_at is not None and as_utc(key.expires_at) <= now:
        status = "expired"
    else:
        status = "active"
    return {
        "prefix": key.prefix,
        "user": key.user_id,
        "admin": key.admin,
        "name": key.name,
        "status": status,
        "created_at": _time(key.created_at),
        "expires_at": _time(key.expires_at),
        "last_used_at": _time(key.last_used_at),
        "revoked_at": _time(key.revoked_at),
    }


def expiry(
    days: float | None = None, at: dt.datetime | None = None, now: dt.datetime | None = None
) -> dt.datetime | None:
    """When a new key expires: ``days`` from now or ``at`` (naive: UTC), or never."""
    now = now or utcnow()
    if days is not None and at is not None:
        raise ApiError(400, "give an expiry in days or a time, not both", param="expires_at")
    if days is not None:
        if days <= 0:
            raise ApiError(400, "a key's lifetime must be positive", param="expires_in_days")
        return now + dt.timedelta(days=days)
    if at is not None:
        at = as_utc(at)
        if at <= now:
            raise ApiError(400, f"{at.isoformat()} is in the past", param="expires_at")
    return at


def find_key(session: Session, prefix: str, owner: str | None = None) -> ApiKey:
    """The one key whose prefix starts with ``prefix`` (``owner``'s only, when given): 404 for
    none, 409 for several."""
    if len(prefix) < MIN_PREFIX:
        raise ApiError(
            400,
            f"a key's prefix has at least {MIN_PREFIX} characters (see 'selftune keys list')",
            param="prefix",
        )
    query = select(ApiKey).where(ApiKey.prefix.startswith(prefix[:MIN_PREFIX], autoescape=True))
    if owner is not None:
        query = query.where(ApiKey.user_id == owner)
    # LIKE ignores case in SQLite: the comparison that counts is Python's. A key's prefix may
    # be shorter than the one given (keys made when prefixes had 8 characters).
    found = [
        k
        for k in session.scalars(query)
        if k.prefix.startswith(prefix[:PREFIX_LENGTH]) or prefix.startswith(k.prefix)
    ]
    if len(prefix) > PREFIX_LENGTH:  # a whole key pasted: its hash says which
        found = [k for k in found if k.key_hash == hash_key(prefix)]
    if not found:
        raise ApiError(404, f"no API key with the prefix {prefix!r}", code="key_not_found")
    if len(found) > 1:
        raise ApiError(
            409,
            f"the prefix {prefix!r} names {len(found)} keys; give more of it (see "
            "'selftune keys list')",
            code="ambiguous_key_prefix",
        )
    return found[0]


def list_keys(db: Database, owner: str | None = None) -> list[dict[str, Any]]:
    with db.read() as session:
        query = select(ApiKey).order_by(ApiKey.id)
        if owner is not None:
            query = query.where(ApiKey.user_id == owner)
        now = utcnow()
        return [key_view(k, now) for k in session.scalars(query)]


def revoke_key(db: Database, prefix: str, owner: str | None = None) -> dict[str, Any]:
    """Revoke one key (revoking it again changes nothing)."""
    with db.write() as session:
        key = find_key(session, prefix, owner)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        return key_view(key)


def rotate_key(
    db: Database, prefix: str, grace: dt.timedelta, owner: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A new key for the owner of ``prefix``'s key, with its rights and name, and a lifetime
    as long as the old one's; the old key expires after ``grace`` (if not sooner). Returns
    the new key (shown once) and the old key's view."""
    now = utcnow()
    with db.write() as session:
        old = find_key(session, prefix, owner)
        if old.revoked_at is not None:
            raise ApiError(
                409, f"the key {old.prefix} was revoked: create a new key", code="key_revoked"
            )
        lifetime = (
            as_utc(old.expires_at) - as_utc(old.created_at) if old.expires_at is not None else None
        )
        ends = now + grace
        if old.expires_at is None or as_utc(old.expires_at) > ends:
            old.expires_at = ends
        user, admin, name = old.user_id, old.admin, old.name
        old_view = key_view(old, now)
    new = create_key(
        db, user, admin=admin, name=name, expires_at=now + lifetime if lifetime else None
    )
    return new, old_view


def _created(db: Database, key: str) -> dict[str, Any]:
    with db.read() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one()
        return {**key_view(row), "key": key}


# --- the routes ------------------------------------------------------------------------------
router = APIRouter(prefix="/api/keys", responses=ERRORS)


def _owner(caller: Caller) -> str | None:
    """Whose keys ``caller`` may see and revoke: an admin's (and an open server's), anyone's."""
    return None if caller.admin else caller.user_id


class KeyCreateRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=128)
    admin: bool = False
    name: str | None = Field(None, max_length=64)
    expires_in_days: float | None = Field(None, gt=0, le=36500)
    expires_at: dt.datetime | None = None


class KeyRotateRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    grace_minutes: float = Field(
        default=60.0, ge=0, le=525600, description="How long the old key keeps working"
    )


@router.get("", response_model=KeyList)
async def get_keys(
    state: State,
    caller: CurrentCaller,
    user: Annotated[str | None, Query(max_length=128, description="Only this user's")] = None,
) -> dict[str, Any]:
    """Every key (an admin's key), or the caller's own keys (a user's key)."""
    owner = _owner(caller)
    if owner is not None and user not in (None, owner):
        return {"data": []}  # a user sees no one else's keys, nor whether they exist
    return {"data": await run_in_threadpool(list_keys, state.db, owner or user)}


@router.post("", status_code=201, response_model=KeyCreated)
async def post_key(
    body: KeyCreateRequest,
    state: State,
    _caller: Annotated[Caller, admin_caller("creating API keys")],
) -> dict[str, Any]:
    def create() -> dict[str, Any]:
        expires_at = expiry(body.expires_in_days, body.expires_at)
        key = create_key(
            state.db, body.user, admin=body.admin, name=body.name, expires_at=expires_at
        )
        return _created(state.db, key)

    return await run_in_threadpool(create)


@router.delete("/{prefix}", response_model=KeyView)
async def delete_key(prefix: str, state: State, caller: CurrentCaller) -> dict[str, Any]:
    """Revoke a key: any key with an admin's key, one's own with a user's."""
    return await run_in_threadpool(revoke_key, state.db, prefix, _owner(caller))


@router.post("/{prefix}/rotate", status_code=201, response_model=KeyCreated)
async def rotate(
    prefix: str,
    state: State,
    _caller: Annotated[Caller, admin_caller("rotating API keys")],
    body: KeyRotateRequest | None = None,
) -> dict[str, Any]:
    """A new key in place of ``prefix``'s; the old one works ``grace_minutes`` more."""
    grace = dt.timedelta(minutes=(body or KeyRotateRequest()).grace_minutes)

    def run() -> dict[str, Any]:
        key, _old = rotate_key(state.db, prefix, grace)
        return _created(state.db, key)

    return await run_in_threadpool(run)
