"""Approving what connectors wrote (``selftune.connectors``): the pending replies, and a
person's decision on each. An approved reply is posted at the connector's next run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import State, admin_caller
from selftune.api.errors import ApiError
from selftune.api.responses import ERRORS
from selftune.store import connector_replies
from selftune.store.schema import MAX_ID

__all__ = ["router"]

router = APIRouter(
    prefix="/api/connectors",
    responses=ERRORS,
    dependencies=[admin_caller("deciding what a connector posts")],
)


class ConnectorReplyView(BaseModel):
    id: int
    connector: str
    status: str
    video_id: str
    item_id: str
    user_id: str
    interaction_id: str
    chain: list[dict[str, Any]]
    reply: str
    posted_id: str | None
    created_at: str


class ConnectorReplyList(BaseModel):
    data: list[ConnectorReplyView]


@router.get("/replies", response_model=ConnectorReplyList)
async def list_replies(
    state: State,
    status: str = Query("pending", description="pending, approved, posted or rejected"),
    connector: str | None = None,
) -> dict[str, Any]:
    if status not in connector_replies.STATUSES:
        raise ApiError(
            400, f"status must be one of {list(connector_replies.STATUSES)}", param="status"
        )
    replies = await run_in_threadpool(connector_replies.list_replies, state.db, status, connector)
    return {"data": [connector_replies.reply_view(r) for r in replies]}


async def _decide(state: State, reply_id: int, decision: str) -> dict[str, Any]:
    def write() -> dict[str, Any]:
        if not 0 < reply_id <= MAX_ID:
            raise LookupError(f"no connector reply {reply_id}")
        return connector_replies.reply_view(
            connector_replies.decide(state.db, reply_id, decision, actor="api")
        )

    try:
        return await run_in_threadpool(write)
    except LookupError as exc:
        raise ApiError(404, str(exc), code="reply_not_found") from exc
    except connector_replies.ReplyError as exc:
        raise ApiError(409, str(exc), code="reply_decided") from exc


@router.post("/replies/{reply_id}/approve", response_model=ConnectorReplyView)
async def approve(reply_id: int, state: State) -> dict[str, Any]:
    return await _decide(state, reply_id, "approved")


@router.post("/replies/{reply_id}/reject", response_model=ConnectorReplyView)
async def reject(reply_id: int, state: State) -> dict[str, Any]:
    return await _decide(state, reply_id, "rejected")
