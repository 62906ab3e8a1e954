"""Imports of documents: ``POST /api/import`` (a file as the raw request body, or JSON with a
``url`` or a ``text``), ``GET /api/imports``, ``GET /api/imports/{id}``,
``DELETE /api/imports/{id}``. See docs/imports.md.

The server only records an import and queues its job; the worker fetches, parses, chunks and
stores (``selftune.data.documents``). A file comes as the request body with its own content
type, not as a multipart form: forms are what browsers send to other sites without asking
(api/guards.py), and the server would need a form parser for one route.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import CurrentCaller, State
from selftune.api.errors import ApiError
from selftune.api.guards import IMPORT_FILE_TYPES
from selftune.api.responses import ERRORS
from selftune.data import documents
from selftune.store.schema import MAX_ID

__all__ = ["FILE_TYPES", "ImportList", "ImportQueued", "ImportView", "router"]

router = APIRouter(prefix="/api", responses=ERRORS)

# The content types a file may be sent with (api/guards.py). Not text/plain: browsers send
# that to any site without asking first, so a page could make a keyless local server import
# what it likes; a .txt file goes as application/octet-stream (its name only hints).
FILE_TYPES = IMPORT_FILE_TYPES

ImportState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ImportRequest(BaseModel):
    """A web page or a text to import (a file is sent as the body itself)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, max_length=2048, description="An http(s) page or file")
    text: str | None = Field(None, description="Text or Markdown to import as one document")
    title: str | None = Field(None, max_length=512, description="The text's title")
    tags: list[str] = Field(default_factory=list)
    shared: bool = Field(False, description="Its chunks in memory are found by every user")
    depth: int = Field(
        0,
        ge=0,
        le=3,
        description="With url: follow its links on the same site this far, one document a page "
        "(imports.max_crawl_pages at most; robots.txt honoured)",
    )


class ImportQueued(BaseModel):
    model_config = ConfigDict(extra="forbid")
    import_id: int
    job_id: int
    state: Literal["queued"]


class ImportError_(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ImportError")
    code: str
    message: str


class DocumentSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    title: str
    format: str
    characters: int
    metadata: dict[str, Any]
    chunks: int


class ImportView(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    user: str
    kind: Literal["file", "url", "text"]
    source: str
    tags: list[str]
    shared: bool
    state: ImportState
    progress: float
    stage: str
    job_id: int | None
    error: ImportError_ | None = Field(description="why it failed: a code and what to do")
    provenance: dict[str, Any] | None = Field(
        description="sha256, size, importer and its version, source, time; a page's final URL"
    )
    documents_made: int
    chunks_made: int
    examples_made: int = Field(description="training examples made and kept (curated)")
    examples_not_kept: int = Field(description="examples curation rejected or flagged")
    duplicates_dropped: int = Field(description="1 when the same bytes were imported before")
    duplicate_of: int | None = Field(description="the earlier import with the same bytes")
    created_at: str
    finished_at: str | None
    documents: list[DocumentSummary] | None = None
    examples_note: str | None = Field(None, description="what became of the examples, in words")


class ImportList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: list[ImportView]
    has_more: bool
    last_id: int | None = Field(description="pass it as ?after= for the next page")


class ImportDeleted(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    deleted: Literal[True]
    documents: int
    chunks: int
    memory_records: int = Field(description="memory records of its chunks, deleted with them")
    examples: int = Field(
        description="training examples it made, deleted (or, where a version trained on them, "
        "withdrawn and kept in that version's lineage)"
    )


_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": 'JSON {"url": ...} or {"text": ..., "title"?: ...}, with "tags"?; or a '
        "file as the raw body (not multipart), its name in ?filename= and tags in ?tags=a,b",
        "content": {
            "application/json": {"schema": ImportRequest.model_json_schema()},
            **{
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in sorted(FILE_TYPES)
            },
        },
    }
}


def _invalid(exc: documents.ImportInvalid) -> ApiError:
    status = 413 if exc.code == "too_large" else 400
    return ApiError(status, exc.message, code=exc.code, param=exc.param)


def _json_request(body: bytes) -> ImportRequest:
    try:
        request = ImportRequest.model_validate(json.loads(body or b"{}"))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(
            400,
            f"invalid request at {param!r}: {first['msg']}",
            code="invalid_request",
            param=param,
        ) from exc
    except ValueError as exc:  # not JSON, or not UTF-8 (ValidationError is one too: above)
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from exc
    if (request.url is None) == (request.text is None):
        raise ApiError(
            400,
            'send one of {"url": ...} or {"text": ...} as JSON, or a file as the request body '
            "(Content-Type application/octet-stream, application/pdf, text/html or "
            "text/markdown, its name in ?filename=)",
            code="invalid_request",
        )
    return request


@router.post(
    "/import",
    status_code=202,
    response_model=ImportQueued,
    openapi_extra=_IMPORT_BODY,
    responses={202: {"description": "Queued: follow it with GET /api/imports/{import_id}"}},
)
async def post_import(
    request: Request,
    state: State,
    caller: CurrentCaller,
    filename: Annotated[
        str | None, Query(max_length=255, description="The file's name: a hint of its format")
    ] = None,
    tags: Annotated[str | None, Query(max_length=2048, description="Tags: a,b,c")] = None,
    user: Annotated[
        str | None, Query(max_length=128, description="The owner, where no key says who asks")
    ] = None,
    shared: Annotated[
        bool, Query(description="Its chunks in memory are found by every user (admin only)")
    ] = False,
) -> dict[str, Any]:
    """Record an import and queue the worker's job for it (202); the import's id follows it."""
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    body = await request.body()  # within serve.max_request_bytes (api/guards.py)
    owner = caller.user(user)
    settings = state.settings
    if media == "application/json":
        asked = _json_request(body)
        kind: documents.Kind = "url" if asked.url is not None else "text"
        source = asked.url if asked.url is not None else "text"
        data = None if asked.text is None else asked.text.encode()
        title, tag_list, depth = asked.title, asked.tags, asked.depth
        shared = shared or asked.shared
    else:
        kind, source, data, title = "file", (filename or "upload").strip() or "upload", body, None
        tag_list, depth = (tags or "").split(","), 0
    if shared:
        caller.require_admin("sharing an import with every user")

    def record() -> tuple[int, int]:
        try:
            return documents.record_import(
                settings,
                state.db,
                owner,
                kind,
                source,
                data=data,
                title=title,
                tags=tag_list,
                shared=shared,
                depth=depth,
            )
        except documents.ImportInvalid as exc:
            raise _invalid(exc) from exc

    import_id, job_id = await run_in_threadpool(record)
    return {"import_id": import_id, "job_id": job_id, "state": "queued"}


@router.get("/imports", response_model=ImportList)
async def get_imports(
    state: State,
    caller: CurrentCaller,
    user: Annotated[str | None, Query(max_length=128, description="Only this user's")] = None,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Ids after this one")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Imports, oldest first: an admin's key sees everyone's (``?user=`` for one), a user's key
    only its own."""
    owner = caller.reads(user)
    if owner is False:
        return {"data": [], "has_more": False, "last_id": None}
    data, has_more = await run_in_threadpool(
        lambda: documents.list_imports(state.db, owner, after=after, limit=limit)
    )
    return {"data": data, "has_more": has_more, "last_id": data[-1]["id"] if data else None}


def _not_found(import_id: int) -> ApiError:
    return ApiError(404, f"no import {import_id}", code="import_not_found")


@router.get("/imports/{import_id}", response_model=ImportView)
async def get_import(import_id: int, state: State, caller: CurrentCaller) -> dict[str, Any]:
    """One import: its state and progress, its error, provenance, documents (with how many
    chunks each) and what it made."""
    owner = None if caller.admin else caller.user_id

    def read() -> dict[str, Any]:
        record = documents.find_import(state.db, import_id, owner) if import_id <= MAX_ID else None
        if record is None:
            raise _not_found(import_id)
        with state.db.read() as session:
            return documents.import_view(session, record, documents=True)

    return await run_in_threadpool(read)


@router.delete("/imports/{import_id}", response_model=ImportDeleted)
async def delete_import(import_id: int, state: State, caller: CurrentCaller) -> dict[str, Any]:
    """Delete an import and everything made from it (documents, chunks, the uploaded file); a
    queued import's job is cancelled, a running one must end first (409)."""
    owner = None if caller.admin else caller.user_id

    def delete() -> dict[str, Any]:
        if import_id > MAX_ID or documents.find_import(state.db, import_id, owner) is None:
            raise _not_found(import_id)
        try:
            return documents.delete_import(state.settings, state.db, import_id)
        except LookupError as exc:  # deleted meanwhile
            raise _not_found(import_id) from exc
        except documents.ImportBusy as exc:
            raise ApiError(409, str(exc), code="import_running") from exc

    return await run_in_threadpool(delete)
