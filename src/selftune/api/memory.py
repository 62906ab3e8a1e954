"""Memory: ``POST /api/memory`` (a note), ``POST /api/memory/search``, ``GET /api/memory/tags``,
``GET /api/memory/status``, ``DELETE /api/memory``; a channel's summary
(``GET``/``POST /api/memory/tags/{tag}/summary``) and the embeddings' export
(``GET /api/memory/export``). See docs/memory.md.

Who sees what: with keys, a caller sees its own records and the shared ones; an admin key sees
every record (``user`` narrows to one user's). On an open server (no keys) a request naming a
``user`` sees that user's records and the shared ones; one naming none sees all, as the server
trusts its local callers. Sharing a record makes it every user's to read, so it takes an admin.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from selftune.api.auth import Caller
from selftune.api.deps import CurrentCaller, State
from selftune.api.errors import ApiError
from selftune.api.responses import ERRORS
from selftune.api.schemas import RequestModel
from selftune.api.state import AppState
from selftune.memory.embedder import embedder_name
from selftune.memory.export import MEDIA_TYPES, npz_chunks, parquet_chunks, stored_models
from selftune.memory.records import (
    NewRecord,
    Scope,
    TagFilter,
    forget_user,
    matching,
    tag_counts,
)
from selftune.memory.service import Memory, SearchQuery
from selftune.memory.summaries import SUMMARY_JOB, is_stale, job_params, scope_key
from selftune.memory.tags import MAX_TAG_CHARS, TagError, normalize_tag, normalize_tags
from selftune.store import jobs
from selftune.store.schema import MemorySummary

__all__ = ["TagsFilter", "checked_tags", "memory_of", "router", "scope_of", "tag_filter"]

router = APIRouter(prefix="/api/memory", responses=ERRORS)

_Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]


class TagsFilter(RequestModel):
    """Which channels to search: any one of ``any``, all of ``all``, none of ``none``."""

    model_config = ConfigDict(extra="forbid")
    any: list[_Tag] = Field(default_factory=list, max_length=32)
    all: list[_Tag] = Field(default_factory=list, max_length=32)
    none: list[_Tag] = Field(default_factory=list, max_length=32)


class NoteRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=100_000)
    title: str | None = Field(None, max_length=512)
    tags: list[_Tag] = Field(default_factory=list, max_length=32)
    shared: bool = Field(False, description="Found by every user (needs an admin key)")
    user: str | None = Field(None, max_length=128, description="Whose note, on an open server")


class NoteAdded(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    tags: list[str]


class SearchRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=10_000)
    k: int = Field(10, ge=1, le=100)
    tags: TagsFilter = Field(default_factory=TagsFilter)
    user: str | None = Field(
        None, max_length=128, description="Only this user's records (an admin's view of them)"
    )
    kinds: list[Literal["interaction", "correction", "chunk", "note"]] = Field(default_factory=list)
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"
    explain: bool = Field(False, description="Say how each result's score was made")


class MemoryHit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    kind: str
    title: str | None
    text: str
    source: str | None
    source_id: str | None
    user: str
    shared: bool
    created_at: str
    tags: list[str]
    score: float
    explain: dict[str, Any] | None = None


class SearchResults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    object: Literal["list"] = "list"
    data: list[MemoryHit]
    mode: str
    vector_search: str = Field(description="ready, building, starting, failed or off")


class TagCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str
    count: int


class TagList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    object: Literal["list"] = "list"
    data: list[TagCount]


class MemoryDeleted(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    deleted: int


class MemoryStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    vector_search: str
    embedding_model: str | None
    error: str | None


def memory_of(state: AppState) -> Memory:
    """The server's memory, or a 409 saying how to turn it on."""
    if state.memory is None:
        raise ApiError(
            409,
            "memory is off on this server; set memory.enabled = true (SELFTUNE_MEMORY__ENABLED)",
            code="memory_disabled",
        )
    return state.memory


def scope_of(caller: Caller, user: str | None) -> Scope:
    """What ``caller`` may read, asking for ``user``'s view (None: its own, or all for an
    admin and for an open server's callers)."""
    if caller.authenticated and not caller.admin:
        if user is not None and user != caller.user_id:
            raise ApiError(
                403,
                "a key reaches its own user's memory only; another user's needs an admin key",
                type="permission_error",
                code="not_your_memory",
                param="user",
            )
        return Scope(caller.user_id)
    if not caller.authenticated and user is not None:
        return Scope(user)
    return Scope(caller.user_id, everything=True)


def checked_tags(tags: Sequence[str], param: str) -> tuple[str, ...]:
    """``tags`` normalized, or a 400 naming ``param`` when there are too many or too long."""
    try:
        return tuple(normalize_tags(tags))
    except TagError as exc:
        raise ApiError(400, str(exc), code="invalid_tags", param=param) from exc


def tag_filter(
    tags: TagsFilter, *, owner: str | None = None, kinds: tuple[str, ...] = ()
) -> TagFilter:
    return TagFilter(
        any_of=checked_tags(tags.any, "tags"),
        all_of=checked_tags(tags.all, "tags"),
        none_of=checked_tags(tags.none, "tags"),
        owner=owner,
        kinds=kinds,
    )


@router.post("", response_model=NoteAdded)
async def add_note(body: NoteRequest, state: State, caller: CurrentCaller) -> dict[str, Any]:
    """Remember a note: found by keyword at once, by meaning once embedded (a second)."""
    memory = memory_of(state)
    if body.shared:
        caller.require_admin("sharing a note with every user")
    tags = list(checked_tags(body.tags, "tags"))
    record = NewRecord(
        user_id=caller.user(body.user),
        kind="note",
        text=body.text,
        title=body.title,
        source="note",
        shared=body.shared,
        tags=tags,
    )
    [record_id] = await run_in_threadpool(memory.write, [record])
    return {"id": record_id, "tags": tags}


@router.post("/search", response_model=SearchResults, response_model_exclude_none=True)
async def search(body: SearchRequest, state: State, caller: CurrentCaller) -> dict[str, Any]:
    """Hybrid search: keyword and vector results fused by rank, rare channels weighted up."""
    memory = memory_of(state)
    scope = scope_of(caller, body.user)
    owner = body.user if scope.everything else None
    query = SearchQuery(
        text=body.query,
        k=body.k,
        tags=tag_filter(body.tags, owner=owner, kinds=tuple(body.kinds)),
        mode=body.mode,
    )
    hits = await run_in_threadpool(memory.search, query, scope)
    weight = memory.config.tag_weight
    data = [
        {
            **hit.record,
            "tags": hit.tags,
            "score": round(hit.ranked.score, 6),
            "explain": hit.ranked.explain(weight) if body.explain else None,
        }
        for hit in hits
    ]
    return {"object": "list", "data": data, "mode": body.mode, "vector_search": memory.state}


@router.get("/tags", response_model=TagList)
async def list_tags(
    state: State,
    caller: CurrentCaller,
    user: Annotated[str | None, Query(max_length=128)] = None,
    origin: Annotated[Literal["user", "import", "auto"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The channels the caller sees, with how many of its visible records carry each."""
    memory = memory_of(state)
    scope = scope_of(caller, user)

    def read() -> list[tuple[str, int]]:
        with memory.db.read() as session:
            origins = (origin,) if origin else ()
            return tag_counts(session, scope, origins=origins, limit=limit)

    counts = await run_in_threadpool(read)
    return {"object": "list", "data": [{"tag": t, "count": n} for t, n in counts]}


@router.get("/status", response_model=MemoryStatus)
async def status(state: State, _caller: CurrentCaller) -> dict[str, Any]:
    memory = state.memory
    return {
        "enabled": memory is not None,
        "vector_search": memory.state if memory else "off",
        "embedding_model": memory.model if memory else None,
        "error": memory.error if memory else None,
    }


@router.delete("", response_model=MemoryDeleted)
async def forget(
    state: State,
    caller: CurrentCaller,
    user: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    """Delete a user's memory (the caller's own; an admin may name another user): records,
    tags, vectors and the summaries made from them. Interactions stay recorded."""
    memory = memory_of(state)
    scope_of(caller, user)  # a user's key names no one else
    target = user or caller.user(None)

    def delete() -> int:
        with memory.db.write() as session:
            ids = forget_user(session, target)
        memory.forget(ids)
        return len(ids)

    return {"user": target, "deleted": await run_in_threadpool(delete)}


# ---- channel summaries -------------------------------------------------------------------------


class ChannelSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str
    text: str
    records: int = Field(description="How many records it covered")
    stale: bool = Field(description="Its channel's records changed since it was written")
    created_at: str
    job_id: int | None = Field(description="The job that wrote it")
    model: str = Field(description="The version that wrote it, or base")


class SummaryQueued(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: int


_TagPath = Annotated[str, Path(min_length=1, max_length=4 * MAX_TAG_CHARS)]
_User = Annotated[str | None, Query(max_length=128)]


def _channel(tag: str) -> str:
    name = normalize_tag(tag)
    if not name or len(name) > MAX_TAG_CHARS:
        raise ApiError(
            400,
            f"a tag has 1 to {MAX_TAG_CHARS} characters, not {len(name)}",
            code="invalid_tags",
            param="tag",
        )
    return name


def _summary_scope(caller: Caller, user: str | None) -> Scope:
    """A summary is of one scope's view: an admin naming ``user`` reads that user's."""
    scope = scope_of(caller, user)
    return Scope(user) if scope.everything and user is not None else scope


@router.get("/tags/{tag:path}/summary", response_model=ChannelSummary)
async def get_summary(
    tag: _TagPath, state: State, caller: CurrentCaller, user: _User = None
) -> dict[str, Any]:
    """The served model's summary of a channel as the caller sees it (its own records and the
    shared ones; an admin's covers every record), and whether its records changed since."""
    memory = memory_of(state)
    scope, name = _summary_scope(caller, user), _channel(tag)

    def read() -> dict[str, Any] | None:
        with memory.db.read() as session:
            summary = session.scalar(
                select(MemorySummary).where(
                    MemorySummary.tag == name, MemorySummary.scope == scope_key(scope)
                )
            )
            if summary is None:
                return None
            return {
                "tag": summary.tag,
                "text": summary.text,
                "records": len(summary.record_ids),
                "stale": is_stale(session, summary, scope),
                "created_at": summary.created_at.isoformat(),
                "job_id": summary.job_id,
                "model": summary.model,
            }

    view = await run_in_threadpool(read)
    if view is None:
        raise ApiError(
            404,
            f"channel {name!r} has no summary yet; POST /api/memory/tags/{quote(name)}/summary "
            "to make one",
            code="summary_not_found",
        )
    return view


@router.post(
    "/tags/{tag:path}/summary",
    status_code=202,
    response_model=SummaryQueued,
    responses={202: {"description": "Queued: follow the job with GET /api/jobs/{job_id}"}},
)
async def summarize(
    tag: _TagPath, state: State, caller: CurrentCaller, user: _User = None
) -> dict[str, Any]:
    """Queue the worker to summarize a channel as the caller sees it with the served model
    (read it with GET on the same path once the job is done). A summary of the same channel
    and scope already queued or running is answered with that job."""
    memory_of(state)
    scope, name = _summary_scope(caller, user), _channel(tag)
    job_id, _new = await run_in_threadpool(
        jobs.enqueue_once, state.db, SUMMARY_JOB, caller.user(user), job_params(name, scope)
    )
    return {"job_id": job_id}


# ---- export ------------------------------------------------------------------------------------

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_EXPORT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The records' metadata and vectors, as an attachment: Parquet, or an "
        ".npz of ids.npy, vectors.npy and metadata.jsonl",
        "content": {media_type: _BINARY for media_type in MEDIA_TYPES.values()},
    }
}


def _index_model(memory: Memory) -> str:
    """The model whose vectors search uses (the configured one until the index is open)."""
    if memory.model is not None:
        return memory.model
    try:
        return embedder_name(memory.config.embedding_model)
    except ValueError:  # a folder that is gone: nothing was embedded with it
        return memory.config.embedding_model


async def _in_threads(chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """``chunks`` made in worker threads (they read the store), never on the event loop, and
    closed, ending their read transaction, however the response ends."""
    try:
        async for chunk in iterate_in_threadpool(chunks):
            if chunk:
                yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(chunks.close)


@router.get("/export", response_class=StreamingResponse, responses=_EXPORT)
async def export(
    state: State,
    caller: CurrentCaller,
    fmt: Annotated[Literal["parquet", "npz"], Query(alias="format")] = "parquet",
    model: Annotated[
        str | None, Query(max_length=255, description="Embedding model; default: search's")
    ] = None,
    user: Annotated[
        str | None, Query(max_length=128, description="Only this user's (an admin's view)")
    ] = None,
) -> StreamingResponse:
    """Every record the caller sees that has a vector of the model, with its vector, streamed
    as one consistent snapshot: Parquet (``format=parquet``) or NumPy (``format=npz``)."""
    memory = memory_of(state)
    scope = scope_of(caller, user)
    where = matching(scope, TagFilter(owner=user if scope.everything else None))
    if model is not None:
        models = await run_in_threadpool(stored_models, memory.db)
        if model not in models:
            raise ApiError(
                404,
                f"memory holds no vectors of model {model!r}; models with vectors: "
                f"{', '.join(models) or 'none'}",
                code="model_not_found",
                param="model",
            )
    chosen = model or _index_model(memory)
    write = parquet_chunks if fmt == "parquet" else npz_chunks
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", chosen).strip("-.") or "vectors"
    filename = f"memory-{slug}.{fmt}"
    return StreamingResponse(
        _in_threads(write(memory.db, where, chosen)),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
