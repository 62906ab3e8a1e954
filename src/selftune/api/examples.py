"""Examples submitted directly: ``POST /api/examples`` (one conversation, a list, or a JSONL
file in OpenAI's fine-tuning chat format), ``GET /api/examples`` (paged by id) and
``GET /api/examples/export`` (the examples training uses, as JSONL). See docs/data.md.

Parsing, curation and storing run off the event loop (curating a thousand chats takes about a
second); the work is in ``selftune.data.submissions``, the routes only decide who may see what.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import Caller
from selftune.api.deps import CurrentCaller, State, admin_caller
from selftune.api.errors import ApiError
from selftune.api.guards import JSONL_TYPES
from selftune.api.responses import ERRORS
from selftune.data import submissions
from selftune.store.schema import MAX_ID

__all__ = ["ExampleList", "ExampleView", "ExamplesSubmitted", "router"]

router = APIRouter(prefix="/api/examples", responses=ERRORS)

State_ = Literal["kept", "rejected", "flagged"]


class NotKept(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    line: int | None = Field(description="its line in a JSONL body, from 1")
    index: int | None = Field(description="its position in a JSON body's examples, from 0")
    state: State_
    reason: str | None
    detail: str | None


class ExamplesSubmitted(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kept: int
    rejected: int
    flagged: int
    reasons: dict[str, int] = Field(description="rejected and flagged examples per reason")
    scrubbed: dict[str, int] = Field(description="personal data replaced, per kind")
    ids: list[int] = Field(description="every stored example's id, in submission order")
    not_kept: list[NotKept]
    held_earlier: list[int] = Field(
        description="earlier examples of yours this request repeated so often (a flood) that "
        "they are now held for an admin"
    )


class ExampleView(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    user: str
    source: str
    state: State_
    active: bool = Field(description="training uses it")
    reason: str | None
    detail: str | None
    provenance: dict[str, Any] | None
    created_at: str
    messages: list[Any]


class ExampleList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: list[ExampleView]
    has_more: bool
    last_id: int | None = Field(description="pass it as ?after= for the next page")


_CONVERSATION = {
    "type": "object",
    "properties": {"messages": {"type": "array", "items": {"type": "object"}}},
    "required": ["messages"],
}
_SUBMISSION_BODY = {
    "requestBody": {
        "required": True,
        "description": 'One conversation {"messages": [...]}, {"examples": [conversation, '
        "...]}, or a JSONL file of conversations (Content-Type application/jsonl or "
        "application/x-ndjson), in OpenAI's fine-tuning chat format",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _CONVERSATION,
                        {
                            "type": "object",
                            "properties": {"examples": {"type": "array", "items": _CONVERSATION}},
                            "required": ["examples"],
                        },
                    ]
                }
            },
            **{media: {"schema": {"type": "string"}} for media in sorted(JSONL_TYPES)},
        },
    }
}


@router.post("", response_model=ExamplesSubmitted, openapi_extra=_SUBMISSION_BODY)
async def post_examples(
    request: Request,
    state: State,
    caller: CurrentCaller,
    user: Annotated[
        str | None,
        Query(max_length=128, description="The owner, where no key says who is asking"),
    ] = None,
    filename: Annotated[
        str | None, Query(max_length=255, description="The uploaded file's name, recorded")
    ] = None,
) -> dict[str, Any]:
    """Curate and store conversations; one that is not a conversation refuses them all (400,
    naming its line), and then nothing is stored."""
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    jsonl = media in JSONL_TYPES
    body = await request.body()  # within serve.max_request_bytes (api/guards.py)
    owner = caller.user(user)

    def work() -> dict[str, Any]:
        try:
            parse = submissions.parse_jsonl if jsonl else submissions.parse_json
            conversations = parse(body)
        except submissions.SubmissionError as exc:
            raise ApiError(400, str(exc), code="invalid_example", param=exc.param) from exc
        origin: dict[str, Any] = {"importer": "api", "format": "jsonl" if jsonl else "json"}
        if filename:
            origin["file"] = filename
        return submissions.submit(state.db, owner, conversations, origin)

    return await run_in_threadpool(work)


@router.get("", response_model=ExampleList)
async def get_examples(
    state: State,
    caller: CurrentCaller,
    source: Annotated[
        str | None, Query(max_length=32, description="submitted, rating, ...")
    ] = None,
    example_state: Annotated[State_ | None, Query(alias="state")] = None,
    user: Annotated[str | None, Query(max_length=128, description="Only this user's")] = None,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Ids after this one")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Examples, oldest first: an admin's key sees everyone's (``?user=`` for one), a user's
    key only its own."""
    owner = caller.reads(user)
    if owner is False:
        return {"data": [], "has_more": False, "last_id": None}
    data, has_more = await run_in_threadpool(
        lambda: submissions.list_examples(
            state.db, owner, source=source, state=example_state, after=after, limit=limit
        )
    )
    return {"data": data, "has_more": has_more, "last_id": data[-1]["id"] if data else None}


_EXPORT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'One {"messages": [...]} per line: the examples training uses',
        "content": {"application/jsonl": {"schema": {"type": "string"}}},
    }
}


@router.get("/export", response_class=StreamingResponse, responses=_EXPORT)
async def export_examples(
    state: State,
    caller: CurrentCaller,
    source: Annotated[str | None, Query(max_length=32)] = None,
    user: Annotated[str | None, Query(max_length=128, description="Only this user's")] = None,
) -> StreamingResponse:
    """The kept examples training uses (a user's key: its own), as JSONL in OpenAI's
    fine-tuning chat format, to take to any other trainer."""
    owner = caller.reads(user)
    lines = iter(()) if owner is False else submissions.export_lines(state.db, owner, source)
    return StreamingResponse(
        lines,
        media_type="application/jsonl",
        headers={"Content-Disposition": 'attachment; filename="examples.jsonl"'},
    )


ExampleId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post("/{example_id}/release", response_model=ExampleView)
async def release_example(
    state: State,
    caller: Annotated[Caller, admin_caller("releasing a quarantined example")],
    example_id: ExampleId,
) -> dict[str, Any]:
    """Release a flagged (quarantined) example: training may use it from the next run. The
    quarantine is ``GET /api/examples?state=flagged``."""
    actor = caller.user_id or "admin"
    try:
        view = await run_in_threadpool(
            lambda: submissions.release_example(state.db, example_id, actor)
        )
    except submissions.ExampleConflict as exc:
        raise ApiError(409, str(exc), code="not_flagged") from exc
    if view is None:
        raise ApiError(404, f"no example {example_id}", code="example_not_found")
    return view


class ExampleDeleted(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    deleted: bool


@router.delete("/{example_id}", response_model=ExampleDeleted)
async def delete_example(
    state: State,
    caller: Annotated[Caller, admin_caller("deleting an example")],
    example_id: ExampleId,
) -> dict[str, Any]:
    """Delete an example no version trained on (a quarantined one, typically)."""
    try:
        found = await run_in_threadpool(lambda: submissions.remove_example(state.db, example_id))
    except submissions.ExampleConflict as exc:
        raise ApiError(409, str(exc), code="example_in_lineage") from exc
    if not found:
        raise ApiError(404, f"no example {example_id}", code="example_not_found")
    return {"id": example_id, "deleted": True}
