"""What the dashboard reads that no other route gives: who the caller is (``GET /api/me``), the
recorded chats, paged (``GET /api/interactions``, ``GET /api/interactions/{id}``), and the
event timeline (``GET /api/events``).

Every record has an owner, and these routes keep to it: a user's key reads its own interactions
and the events of its own jobs, an admin's key (and any caller of an open server, which trusts
its local callers) reads everyone's. Another user's interaction answers 404, as if it did not
exist, as ``POST /api/feedback`` does.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, and_, false, func, or_, select, true, tuple_
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import Caller
from selftune.api.deps import CurrentCaller, State
from selftune.api.errors import ApiError
from selftune.api.responses import ERRORS
from selftune.store.schema import MAX_ID, Event, Feedback, Interaction, Job, Version, as_utc

__all__ = ["event_view", "router", "visible_events"]

router = APIRouter(prefix="/api", responses=ERRORS)

# Events a user's key sees besides its own jobs': what every user is served changed.
PUBLIC_EVENTS = ("promote", "rollback")
_PREVIEW = 200  # characters of a question or an answer in a listing


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Me(_Body):
    user: str | None = Field(description="the key's owner; null: no key on an open server")
    authenticated: bool = Field(description="whether a valid key was sent")
    admin: bool = Field(description="whether this caller may promote, roll back, manage keys")
    auth_required: bool = Field(description="whether the server requires API keys")
    memory: bool = Field(description="whether memory (search, retrieval) is turned on")
    serving: str = Field(description="the version served now, or base")
    last_event: int = Field(
        description="the newest event's id this caller sees (0: none): where a page that read "
        "the state now starts GET /api/events/stream (?after=), so it misses nothing"
    )


class InteractionSummary(_Body):
    id: str = Field(description="the interaction's id, what POST /api/feedback rates")
    user: str
    kind: str = Field(description="chat or completion")
    created_at: str = Field(description="ISO 8601")
    version: str = Field(description="the version that answered: a version name or base")
    question: str = Field(description="the last user message (or the prompt), shortened")
    answer: str = Field(description="the answer, shortened")
    rating: int | None = Field(description="the latest feedback's rating, if any")
    corrected: bool = Field(description="whether a correction was sent for it")
    memory: bool = Field(description="whether memory passages were added to its prompt")


class InteractionPage(_Body):
    data: list[InteractionSummary]
    next: str | None = Field(description="pass it as ?before= for the next (older) page")


class FeedbackItem(_Body):
    rating: int
    correction: str | None
    comment: str | None
    created_at: str


class InteractionDetail(_Body):
    id: str
    user: str
    kind: str
    model: str = Field(description="the model the request asked for")
    version: str
    created_at: str
    messages: list[Any] = Field(description="the request's messages (or [{'prompt'}])")
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    chat_template: str | None = Field(description="the template the request chose, if any")
    memory: list[Any] | None = Field(description="the memory passages given, with sources")
    feedback: list[FeedbackItem]


class EventView(_Body):
    id: int
    kind: str = Field(
        description="job_queued, job_succeeded, promote, rollback, autopilot_triggered, ..."
    )
    created_at: str
    payload: dict[str, Any]


class EventPage(_Body):
    data: list[EventView]
    next: int | None = Field(description="pass it as ?before= for the next (older) page")


def _iso(moment: dt.datetime) -> str:
    return as_utc(moment).isoformat()


def _version_names(session: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return dict(session.execute(select(Version.id, Version.name).where(Version.id.in_(ids))).all())


def _question(messages: list[Any]) -> str:
    """The last thing the user said: a chat's last user message, or a completion's prompt."""
    for message in reversed(messages):
        if not isinstance(message, dict):
            continue
        if "prompt" in message:
            return str(message["prompt"])
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: their text
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _short(text: str) -> str:
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…"


@router.get("/me", response_model=Me)
async def me(state: State, caller: CurrentCaller) -> dict[str, Any]:
    """Who the key names and what it may do: the dashboard shows admin actions by this."""

    def last_event() -> int:
        with state.db.read() as session:
            return session.scalar(select(func.max(Event.id)).where(visible_events(caller))) or 0

    return {
        "user": caller.user_id,
        "authenticated": caller.authenticated,
        "admin": caller.admin,
        "auth_required": state.settings.serve.auth_required,
        "memory": state.memory is not None,
        "serving": state.serving.name,
        "last_event": await run_in_threadpool(last_event),
    }


def _read_page(
    session: Session, owner: str | None, kind: str | None, before: str | None, limit: int
) -> dict[str, Any]:
    query = select(Interaction)
    if owner is not None:
        query = query.where(Interaction.user_id == owner)
    if kind is not None:
        query = query.where(Interaction.kind == kind)
    if before is not None:
        anchor = session.get(Interaction, before)
        if anchor is None or (owner is not None and anchor.user_id != owner):
            raise ApiError(400, f"no interaction {before!r} to page from", param="before")
        query = query.where(
            tuple_(Interaction.created_at, Interaction.id) < (anchor.created_at, anchor.id)
        )
    query = query.order_by(Interaction.created_at.desc(), Interaction.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    more, rows = len(rows) > limit, rows[:limit]
    ids = [row.id for row in rows]
    feedback: dict[str, list[Feedback]] = {}
    if ids:
        for item in session.scalars(
            select(Feedback).where(Feedback.interaction_id.in_(ids)).order_by(Feedback.id)
        ):
            feedback.setdefault(item.interaction_id, []).append(item)
    names = _version_names(session, {r.version_id for r in rows if r.version_id is not None})
    data = [
        {
            "id": row.id,
            "user": row.user_id,
            "kind": row.kind,
            "created_at": _iso(row.created_at),
            "version": names.get(row.version_id, "?") if row.version_id else "base",
            "question": _short(_question(row.messages)),
            "answer": _short(row.response),
            "rating": feedback[row.id][-1].rating if row.id in feedback else None,
            "corrected": any(f.correction for f in feedback.get(row.id, ())),
            "memory": bool(row.memory),
        }
        for row in rows
    ]
    return {"data": data, "next": ids[-1] if more else None}


@router.get("/interactions", response_model=InteractionPage)
async def list_interactions(
    state: State,
    caller: CurrentCaller,
    before: Annotated[
        str | None, Query(max_length=64, description="the last id of the page before")
    ] = None,
    kind: Annotated[Literal["chat", "completion"] | None, Query()] = None,
    user: Annotated[
        str | None, Query(max_length=128, description="Only this user's (an admin's view)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Recorded interactions, newest first, paged: a user's key sees its own, an admin's
    everyone's (``?user=`` for one)."""
    owner = caller.reads(user)
    if owner is False:
        return {"data": [], "next": None}

    def read() -> dict[str, Any]:
        with state.db.read() as session:
            return _read_page(session, owner, kind, before, limit)

    return await run_in_threadpool(read)


@router.get("/interactions/{interaction_id}", response_model=InteractionDetail)
async def get_interaction(
    interaction_id: str, state: State, caller: CurrentCaller
) -> dict[str, Any]:
    """One interaction whole: its messages, answer, the memory it was given and its feedback."""

    def read() -> dict[str, Any]:
        with state.db.read() as session:
            row = session.get(Interaction, interaction_id)
            owner = caller.reads(None)
            if row is None or (owner is not None and row.user_id != owner):
                raise ApiError(
                    404, f"no interaction {interaction_id!r}", code="interaction_not_found"
                )
            names = _version_names(session, {row.version_id} if row.version_id else set())
            feedback = session.scalars(
                select(Feedback).where(Feedback.interaction_id == row.id).order_by(Feedback.id)
            )
            return {
                "id": row.id,
                "user": row.user_id,
                "kind": row.kind,
                "model": row.model,
                "version": names.get(row.version_id, "?") if row.version_id else "base",
                "created_at": _iso(row.created_at),
                "messages": row.messages,
                "response": row.response,
                "finish_reason": row.finish_reason,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "latency_ms": row.latency_ms,
                "chat_template": row.chat_template,
                "memory": row.memory,
                "feedback": [
                    {
                        "rating": f.rating,
                        "correction": f.correction,
                        "comment": f.comment,
                        "created_at": _iso(f.created_at),
                    }
                    for f in feedback
                ],
            }

    return await run_in_threadpool(read)


def visible_events(caller: Caller) -> ColumnElement[bool]:
    """The events ``caller`` may read: all of them for an admin (and an open server's
    callers); for a user's key, its own jobs' and the changes to what everyone is served."""
    if caller.admin:
        return true()
    if caller.user_id is None:
        return false()
    own_jobs = select(Job.id).where(Job.user_id == caller.user_id)
    return or_(
        Event.kind.in_(PUBLIC_EVENTS),
        and_(
            Event.kind.like("job\\_%", escape="\\"),
            Event.payload["job_id"].as_integer().in_(own_jobs),
        ),
    )


def event_view(event: Event, caller: Caller) -> dict[str, Any]:
    """An event as the API shows it. Who promoted or rolled back is a user's name: a user's key
    sees its own, and "an admin" for anyone else's."""
    payload = dict(event.payload or {})
    if not caller.admin and payload.get("actor") not in (None, caller.user_id):
        payload["actor"] = "an admin"
    return {
        "id": event.id,
        "kind": event.kind,
        "created_at": _iso(event.created_at),
        "payload": payload,
    }


@router.get("/events", response_model=EventPage)
async def list_events(
    state: State,
    caller: CurrentCaller,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="the last id of the page before")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="only events newer than this id")
    ] = None,
    kind: Annotated[
        list[str] | None, Query(max_length=64, description="only these kinds (repeatable)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The event timeline, newest first, paged: jobs queued, started, finished; promotions and
    rollbacks; connector runs; the autopilot's triggers, diagnoses, fixes, alerts and settings
    changes. A user's key sees its own jobs' events and the promotions and rollbacks; an
    admin's every event."""

    def read() -> dict[str, Any]:
        query = select(Event).where(visible_events(caller))
        if kind:
            query = query.where(Event.kind.in_(kind))
        if before is not None:
            query = query.where(Event.id < before)
        if after is not None:
            query = query.where(Event.id > after)
        query = query.order_by(Event.id.desc()).limit(limit + 1)
        with state.db.read() as session:
            rows = list(session.scalars(query))
        more, rows = len(rows) > limit, rows[:limit]
        return {
            "data": [event_view(e, caller) for e in rows],
            "next": rows[-1].id if more else None,
        }

    return await run_in_threadpool(read)
