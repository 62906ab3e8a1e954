"""``GET /api/settings``: the settings the server runs with, for an admin's key, secrets hidden.

Every setting as ``selftune status --settings`` lists it (dotted name, value, description). A
value is replaced by :data:`REDACTED` when its name says it is a secret (a part of the name is
key, secret, password, passwd, token or credentials: ``proxy.upstream_api_key``,
``youtube.api_key``), and a URL's password and its secret-named query parameters are
(``database_url``'s ``postgresql://user:pass@host``). An empty secret stays empty: whether one
is set is no secret. Counts of tokens (``serve.default_max_tokens``) are not secrets: a name's
parts are compared whole, ``tokens`` is not ``token``.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import Caller
from selftune.api.deps import State, admin_caller
from selftune.api.responses import ERRORS
from selftune.autopilot.control import current
from selftune.config import Settings, iter_settings

__all__ = ["REDACTED", "redacted_settings", "router"]

router = APIRouter(prefix="/api", responses=ERRORS)

REDACTED = "********"
SECRET_PARTS = frozenset({"key", "secret", "password", "passwd", "token", "credentials"})
_PARTS = re.compile(r"[^a-z0-9]+")


class SettingView(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="dotted: section.name, as in selftune.toml's [section]")
    value: Any = Field(description="the effective value; secrets are '********'")
    description: str
    redacted: bool = Field(description="whether the value was hidden")


class SettingList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: list[SettingView]


def is_secret_name(name: str) -> bool:
    """Whether a setting (or a URL's query parameter) named ``name`` holds a secret."""
    return any(part in SECRET_PARTS for part in _PARTS.split(name.lower()))


def _redact_url(text: str) -> str:
    """``text`` with a URL's password and secret-named query parameters hidden."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return REDACTED  # not a URL any client could use; hide it rather than guess
    if not parts.scheme or not parts.netloc:
        return text
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(is_secret_name(k) for k, _ in pairs):
        query = urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _plain(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def redacted_settings(settings: Settings) -> list[dict[str, Any]]:
    """Every setting as (name, value, description, redacted), secrets hidden."""
    out = []
    for name, raw, description in iter_settings(settings):
        value = _plain(raw)
        hidden = value
        if is_secret_name(name.rpartition(".")[2]):
            hidden = REDACTED if value not in ("", None) else value
        elif isinstance(value, str) and "://" in value:
            hidden = _redact_url(value)
        out.append(
            {"name": name, "value": hidden, "description": description, "redacted": hidden != value}
        )
    return out


@router.get("/settings", response_model=SettingList)
async def get_settings(
    state: State, _caller: Annotated[Caller, admin_caller("reading the server's settings")]
) -> dict[str, Any]:
    """The effective settings (file, environment and defaults merged, and the autopilot's
    changes made at run time), secrets hidden; an admin's key only."""

    def read() -> Settings:
        with state.db.read() as session:
            autopilot = current(state.settings, session)
        return state.settings.model_copy(update={"autopilot": autopilot})

    return {"data": redacted_settings(await run_in_threadpool(read))}
