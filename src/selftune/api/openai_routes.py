"""OpenAI-compatible routes: chat completions, completions, models.

Each answer is recorded as an interaction (who asked, the version that answered, the messages,
the answer, token counts, latency) and committed before the client gets the end of the answer:
the response ``id`` is the interaction's id, for ``POST /api/feedback``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from selftune.api.auth import resolve_caller
from selftune.api.errors import ApiError, error_body
from selftune.api.schemas import ChatRequest, CompletionRequest
from selftune.api.state import AppState, adapter_for, generate
from selftune.engines.base import Engine, GenerationParams
from selftune.registry.versions import ServingTarget
from selftune.store.db import Database
from selftune.store.schema import Conversation, Interaction
from selftune.store.users import ensure_user

__all__ = ["router"]

router = APIRouter()


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.selftune
    return state


def ready_engine(state: AppState) -> Engine:
    if state.engine is None:
        if state.load_error:
            raise ApiError(
                500,
                f"the model failed to load: {state.load_error}",
                type="server_error",
                code="model_load_failed",
            )
        raise ApiError(
            503,
            "the model is still loading; retry in a few seconds",
            type="server_error",
            code="model_loading",
        )
    return state.engine


def _check_model(state: AppState, model: str) -> None:
    if model != state.settings.model_name:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server serves "
            f"{state.settings.model_name!r} (see GET /v1/models)",
            code="model_not_found",
            param="model",
        )


def _params(
    state: AppState, engine: Engine, body: Any, prompt_tokens: int, requested: int | None
) -> GenerationParams:
    room = engine.context_length - prompt_tokens
    if room <= 0 or (requested is not None and requested > room):
        raise ApiError(
            400,
            f"this model's context is {engine.context_length} tokens; the prompt has "
            f"{prompt_tokens} and {requested or 1} more were asked for. Shorten the messages "
            "or lower max_tokens.",
            code="context_length_exceeded",
            param="messages",
        )
    temperature = (
        state.settings.default_temperature if body.temperature is None else body.temperature
    )
    return GenerationParams(
        max_tokens=requested or min(state.settings.default_max_tokens, room),
        temperature=temperature,
        top_p=body.top_p,
        stop=body.stops(),
        seed=body.seed,
    )


def record_interaction(db: Database, **fields: Any) -> None:
    with db.write() as session:
        user_id = fields["user_id"]
        ensure_user(session, user_id)
        conversation = Conversation(id=f"conv-{uuid.uuid4().hex}", user_id=user_id)
        session.add(conversation)
        session.flush()
        session.add(Interaction(conversation_id=conversation.id, **fields))


async def _answer(
    state: AppState,
    *,
    kind: str,
    interaction_id: str,
    user_id: str,
    prompt: str,
    recorded_messages: list[dict[str, Any]],
    body: Any,
    requested_max: int | None,
    template_override: str | None,
) -> Any:
    engine = ready_engine(state)
    target: ServingTarget = state.serving  # fixed for the whole request
    prompt_tokens = await run_in_threadpool(engine.count_tokens, prompt)
    params = _params(state, engine, body, prompt_tokens, requested_max)
    started = time.perf_counter()
    created = int(time.time())
    model = state.settings.model_name

    def record(text: str, finish: str, completion_tokens: int) -> dict[str, Any]:
        fields = {
            "id": interaction_id,
            "user_id": user_id,
            "kind": kind,
            "model": model,
            "version_id": target.version_id,
            "messages": recorded_messages,
            "response": text,
            "finish_reason": finish,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "chat_template": template_override,
        }
        record_interaction(state.db, **fields)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    chunks = generate(engine, prompt, params, adapter_for(target))
    headers = {"X-Selftune-Version": target.name}
    envelope = {
        "id": interaction_id,
        "created": created,
        "model": model,
        "system_fingerprint": target.name,
    }
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        stream = _sse(chunks, envelope, kind, record, include_usage)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    text, finish, n_tokens = "", "length", 0
    async for chunk in chunks:
        text += chunk.text
        if chunk.finish_reason:
            finish, n_tokens = chunk.finish_reason, chunk.completion_tokens
    usage = await run_in_threadpool(record, text, finish, n_tokens)
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return JSONResponse(
        {**envelope, "object": obj, "choices": [choice], "usage": usage}, headers=headers
    )


async def _sse(
    chunks: AsyncIterator[Any],
    envelope: dict[str, Any],
    kind: str,
    record: Any,
    include_usage: bool,
) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def event(choice: dict[str, Any], **extra: Any) -> str:
        return f"data: {json.dumps({**envelope, 'object': obj, 'choices': [choice], **extra})}\n\n"

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        if kind == "chat":
            return {
                "index": 0,
                "delta": {"content": text} if text else {},
                "finish_reason": finish,
                "logprobs": None,
            }
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    if kind == "chat":
        yield event(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
                "logprobs": None,
            }
        )
    text, finish, n_tokens = "", "length", 0
    async for chunk in chunks:
        text += chunk.text
        if chunk.finish_reason:
            finish, n_tokens = chunk.finish_reason, chunk.completion_tokens
        if chunk.text or chunk.finish_reason:
            yield event(choice(chunk.text, chunk.finish_reason))
    try:
        usage = await run_in_threadpool(record, text, finish, n_tokens)
    except Exception as exc:
        body = error_body(f"the answer could not be recorded: {exc}", "server_error")
        yield f"data: {json.dumps(body)}\n\n"
        return
    if include_usage:
        yield f"data: {json.dumps({**envelope, 'object': obj, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatRequest, request: Request, authorization: str | None = Header(None)
) -> Any:
    state = app_state(request)
    caller = await run_in_threadpool(
        resolve_caller, state.db, authorization, state.settings.auth_required
    )
    _check_model(state, body.model)
    engine = ready_engine(state)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    template = body.chat_template or state.serving.chat_template
    try:
        prompt = engine.render_chat(messages, template)
    except Exception as exc:
        raise ApiError(
            400, f"the chat template could not render these messages: {exc}", param="messages"
        ) from exc
    return await _answer(
        state,
        kind="chat",
        interaction_id=f"chatcmpl-{uuid.uuid4().hex}",
        user_id=caller.user(body.user),
        prompt=prompt,
        recorded_messages=messages,
        body=body,
        requested_max=body.max_completion_tokens or body.max_tokens,
        template_override=body.chat_template,
    )


@router.post("/v1/completions")
async def completions(
    body: CompletionRequest, request: Request, authorization: str | None = Header(None)
) -> Any:
    state = app_state(request)
    caller = await run_in_threadpool(
        resolve_caller, state.db, authorization, state.settings.auth_required
    )
    _check_model(state, body.model)
    try:
        prompt = body.prompt_text()
    except ValueError as exc:
        raise ApiError(400, str(exc), param="prompt") from exc
    return await _answer(
        state,
        kind="completion",
        interaction_id=f"cmpl-{uuid.uuid4().hex}",
        user_id=caller.user(body.user),
        prompt=prompt,
        recorded_messages=[{"prompt": prompt}],
        body=body,
        requested_max=body.max_tokens,
        template_override=None,
    )


@router.get("/v1/models")
async def list_models(request: Request, authorization: str | None = Header(None)) -> Any:
    state = app_state(request)
    await run_in_threadpool(resolve_caller, state.db, authorization, state.settings.auth_required)
    return {
        "object": "list",
        "data": [
            {
                "id": state.settings.model_name,
                "object": "model",
                "created": 0,
                "owned_by": "selftune",
                "version": state.serving.name,
            }
        ],
    }
