"""Live updates for the dashboard, as server-sent events the server makes by watching the store:
``GET /api/events/stream``.

It sends each new event the caller may see (``event: store``, with its id, so a browser that
reconnects sends ``Last-Event-ID`` and misses nothing) and each change of a queued or running
job of the caller's (``event: job``: its status, stage and progress, as ``GET /api/jobs/{id}``
answers them, once more when it ends). The worker reports progress into the job's row; this
reads the rows every :data:`POLL_SECONDS`, one short query per connection, rather than each
browser polling the API.

A browser's ``EventSource`` cannot send an ``Authorization`` header, and an API key must never
be put in a URL (logs keep URLs). So the page first calls ``POST /api/events/token`` with its
key; the answer sets a short-lived, signed, HttpOnly cookie that only this path receives, and
the stream accepts it in place of the key. The cookie names the key's owner and rights, for
:data:`TOKEN_SECONDS`, and is signed with a secret of this process (a restart ends them all).
Other clients may send their key as usual.

A request that asks for ``text/event-stream`` (as ``EventSource`` does) is held open for
:data:`HOLD_SECONDS` and then ended; the browser reconnects by itself. Any other request gets
what is new at once and the end, so that a client that reads to the end (a test, a fuzzer)
is not kept waiting.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import Caller, caller_of, resolve_caller
from selftune.api.dashboard_api import event_view, visible_events
from selftune.api.deps import CurrentCaller, State
from selftune.api.errors import ApiError
from selftune.api.responses import _SSE_EVENT, ERRORS
from selftune.api.state import AppState
from selftune.store import jobs
from selftune.store.schema import MAX_ID, Event, Job, utcnow

__all__ = ["COOKIE", "HOLD_SECONDS", "POLL_SECONDS", "TOKEN_SECONDS", "router"]

router = APIRouter(prefix="/api/events", responses=ERRORS)

COOKIE = "selftune_stream"
STREAM_PATH = "/api/events/stream"
TOKEN_SECONDS = 300
HOLD_SECONDS = 60.0
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
_MOST_EVENTS = 200  # per read: a browser far behind catches up over a few reads
_SECRET = secrets.token_bytes(32)


class StreamToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_in: int = Field(description="seconds the cookie it set is accepted by the stream")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(caller: Caller, now: float | None = None) -> str:
    """A token that names ``caller`` for :data:`TOKEN_SECONDS`."""
    expires = int((now if now is not None else time.time()) + TOKEN_SECONDS)
    body = json.dumps(
        {"u": caller.user_id, "k": caller.authenticated, "a": caller.admin, "e": expires},
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(_SECRET, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def read_token(token: str, now: float | None = None) -> Caller | None:
    """The caller a token names; None when it is forged, malformed or expired."""
    try:
        body_text, mac_text = token.split(".")
        body, mac = _unb64(body_text), _unb64(mac_text)
    except ValueError:
        return None
    if not hmac.compare_digest(mac, hmac.new(_SECRET, body, hashlib.sha256).digest()):
        return None
    fields = json.loads(body)
    if fields["e"] <= (now if now is not None else time.time()):
        return None
    return Caller(fields["u"], bool(fields["k"]), admin=bool(fields["a"]))


@router.post("/token", response_model=StreamToken)
async def stream_token(request: Request, caller: CurrentCaller, response: Response) -> Any:
    """Set the cookie ``GET /api/events/stream`` accepts in place of the key, for a browser's
    ``EventSource`` (which cannot send a key). Ask again before it expires."""
    response.set_cookie(
        COOKIE,
        sign_token(caller),
        max_age=TOKEN_SECONDS,
        path=STREAM_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return {"expires_in": TOKEN_SECONDS}


async def _stream_caller(
    request: Request, state: State, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    """The key's caller when a key is sent; else the cookie's; else as an open server treats
    a caller without a key (a 401 where keys are required)."""
    if authorization:
        client = request.client.host if request.client else ""
        return await caller_of(state, authorization, client)
    token = request.cookies.get(COOKIE)
    if token:
        caller = read_token(token)
        if caller is not None:
            return caller
        if state.settings.serve.auth_required:
            raise ApiError(
                401,
                "the stream's token expired or is not this server's: get another with "
                "POST /api/events/token (with your key)",
                type="authentication_error",
                code="invalid_stream_token",
            )
    return resolve_caller(state.db, None, state.settings.serve.auth_required)


StreamCaller = Annotated[Caller, Depends(_stream_caller)]


def _sse(data: dict[str, Any], event: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Watch:
    """What one connection has sent: the last event's id, and each watched job's state."""

    def __init__(self, state: AppState, caller: Caller, after: int | None) -> None:
        self.state, self.caller, self.after = state, caller, after
        self.jobs: dict[int, tuple[str, str, float]] = {}
        # Jobs that end between two reads are never seen queued or running: those that ended
        # since the last read are read too (before the connection, the page reads them itself).
        self.since = utcnow()

    def read(self) -> list[str]:
        """The messages for what changed since the last read."""
        out: list[str] = []
        with self.state.db.read() as session:
            visible = visible_events(self.caller)
            if self.after is None:  # from now on: the page reads the past with GET /api/events
                self.after = session.scalar(select(func.max(Event.id)).where(visible)) or 0
            events = session.scalars(
                select(Event)
                .where(visible, Event.id > self.after)
                .order_by(Event.id)
                .limit(_MOST_EVENTS)
            ).all()
            for event in events:
                out.append(_sse(event_view(event, self.caller), "store", event.id))
                self.after = event.id
            since, self.since = self.since, utcnow()
            query = select(Job).where(
                Job.status.in_(("queued", "running"))
                | Job.id.in_(list(self.jobs))
                | (Job.finished_at >= since)
            )
            if self.caller.authenticated and not self.caller.admin:
                query = query.where(Job.user_id == self.caller.user_id)
            for job in session.scalars(query.order_by(Job.id)):
                seen = (job.status, job.stage, round(job.progress, 4))
                if self.jobs.get(job.id) != seen:
                    out.append(_sse(jobs.job_view(job), "job"))
                if job.status in jobs.TERMINAL:
                    self.jobs.pop(job.id, None)
                else:
                    self.jobs[job.id] = seen
        return out


async def _messages(request: Request, watch: _Watch, hold: float) -> AsyncIterator[str]:
    yield f"retry: {int(POLL_SECONDS * 4000)}\n\n"
    deadline = time.monotonic() + hold
    quiet_since = time.monotonic()
    while True:
        messages = await run_in_threadpool(watch.read)
        for message in messages:
            yield message
        now = time.monotonic()
        if messages:
            quiet_since = now
        elif now - quiet_since >= KEEPALIVE_SECONDS:
            yield ": still here\n\n"  # proxies close connections that stay silent
            quiet_since = now
        if now >= deadline or await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)


_STREAM_EXAMPLE = (
    'id: 42\nevent: store\ndata: {"id":42,"kind":"job_succeeded","created_at":"...",'
    '"payload":{"job_id":7,"error":null}}\n\n'
    'event: job\ndata: {"job_id":8,"kind":"train","status":"running","stage":"training step '
    '3/10 loss 2.412","progress":0.275,...}\n\n'
)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events: 'store' events (the timeline's, with their id) "
            "and 'job' events (a watched job's state as GET /api/jobs/{id} answers it). Held "
            f"open {int(HOLD_SECONDS)} s when asked with Accept: text/event-stream, else ended "
            "after what is new.",
            "content": {"text/event-stream": {"schema": _SSE_EVENT, "example": _STREAM_EXAMPLE}},
        }
    },
)
async def stream(
    request: Request,
    state: State,
    caller: StreamCaller,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="send the events after this id (default: from now)"),
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Live updates of the event timeline and the caller's jobs; see the module's docstring."""
    if last_event_id and last_event_id.isascii() and last_event_id.isdigit():  # reconnecting
        after = min(int(last_event_id), MAX_ID)
    held = "text/event-stream" in request.headers.get("accept", "")
    watch = _Watch(state, caller, after)
    return StreamingResponse(
        _messages(request, watch, HOLD_SECONDS if held else 0.0),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
