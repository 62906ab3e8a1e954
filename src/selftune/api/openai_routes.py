"""OpenAI-compatible routes: chat completions, completions, models.

Each answer is recorded as an interaction (who asked, the version that answered, the messages,
the answer, token counts, latency) and committed before the client gets the end of the answer:
the response ``id`` is the interaction's id, for ``POST /api/feedback``.

``model`` picks what answers (the served name, a version name, ``base``, a runtime adapter), and
so does llama.cpp's ``lora`` field, which llama.cpp's server also accepts on these routes.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import CurrentCaller, ReadyEngine, State
from selftune.api.errors import ApiError, error_body
from selftune.api.generation import (
    Asked,
    Generation,
    count_prompt_tokens,
    room_for,
    version_headers,
)
from selftune.api.responses import (
    ERRORS,
    ChatCompletion,
    ModelList,
    TextCompletion,
    event_stream,
)
from selftune.api.schemas import ChatRequest, CompletionRequest
from selftune.api.state import AppState
from selftune.api.targets import Target, model_cards, target_of
from selftune.engines.base import Chunk, Engine, GenerationParams

__all__ = ["router"]

router = APIRouter(responses=ERRORS)


def _params(
    state: AppState, engine: Engine, body: Any, prompt_tokens: int, requested: int | None
) -> GenerationParams:
    room = room_for(engine, prompt_tokens, requested, "max_tokens")
    temperature = (
        state.settings.serve.default_temperature if body.temperature is None else body.temperature
    )
    return GenerationParams(
        max_tokens=requested or min(state.settings.serve.default_max_tokens, room),
        temperature=temperature,
        top_p=body.top_p,
        stop=body.stops(),
        seed=body.seed,
    )


async def _answer(
    state: AppState,
    engine: Engine,
    target: Target,
    asked: Asked,
    prompt: str,
    body: Any,
    requested_max: int | None,
) -> Response:
    prompt_tokens = await count_prompt_tokens(engine, prompt)
    params = _params(state, engine, body, prompt_tokens, requested_max)
    generation = Generation(state, target, asked, prompt_tokens)
    headers = version_headers(target)
    envelope = {
        "id": asked.interaction_id,
        "created": int(time.time()),
        "model": target.model,
        "system_fingerprint": target.name,
    }
    chunks = generation.run(engine, prompt, params)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        stream = _sse(chunks, envelope, asked.kind, generation, include_usage)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    async with contextlib.aclosing(chunks):
        async for _ in chunks:
            pass
    usage = await run_in_threadpool(generation.record)
    text, finish = generation.text, generation.finish
    if asked.kind == "chat":
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
    chunks: AsyncGenerator[Chunk, None],
    envelope: dict[str, Any],
    kind: str,
    generation: Generation,
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
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if chunk.text or chunk.finish_reason:
                yield event(choice(chunk.text, chunk.finish_reason))
    try:
        usage = await run_in_threadpool(generation.record)
    except Exception as exc:
        body = error_body(f"the answer could not be recorded: {exc}", "server_error")
        yield f"data: {json.dumps(body)}\n\n"
        return
    if include_usage:
        yield f"data: {json.dumps({**envelope, 'object': obj, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


_STREAM = (
    'With "stream": true, server-sent events instead: `data: <chunk>` lines, each chunk the '
    "object above with one piece of the text in its choice (chat: a `chat.completion.chunk`, the "
    "text in `delta`), the last with `finish_reason`; with `stream_options.include_usage`, a "
    "chunk with `usage` and no choices; then `data: [DONE]`. The answer is recorded before "
    "`[DONE]`; if that fails, an error body comes instead of `[DONE]`."
)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=event_stream(
        f"The answer, as a `chat.completion` object. {_STREAM}",
        'data: {"id": "chatcmpl-...", "object": "chat.completion.chunk", "choices": '
        '[{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null, "logprobs": null}], '
        "...}\n\ndata: [DONE]\n\n",
    ),
)
async def chat_completions(
    body: ChatRequest, state: State, caller: CurrentCaller, engine: ReadyEngine
) -> Response:
    target = await target_of(state, engine.name, body.model, body.lora)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    template = body.chat_template or target.chat_template
    try:
        prompt = engine.render_chat(messages, template)
    except Exception as exc:
        raise ApiError(
            400, f"the chat template could not render these messages: {exc}", param="messages"
        ) from exc
    asked = Asked(
        f"chatcmpl-{uuid.uuid4().hex}", caller.user(body.user), "chat", messages, body.chat_template
    )
    requested = body.max_completion_tokens or body.max_tokens
    return await _answer(state, engine, target, asked, prompt, body, requested)


@router.post(
    "/v1/completions",
    response_model=TextCompletion,
    responses=event_stream(
        f"The answer, as a `text_completion` object. {_STREAM}",
        'data: {"id": "cmpl-...", "object": "text_completion", "choices": [{"index": 0, '
        '"text": "Hi", "finish_reason": null, "logprobs": null}], ...}\n\ndata: [DONE]\n\n',
    ),
)
async def completions(
    body: CompletionRequest, state: State, caller: CurrentCaller, engine: ReadyEngine
) -> Response:
    target = await target_of(state, engine.name, body.model, body.lora)
    try:
        prompt = body.prompt_text()
    except ValueError as exc:
        raise ApiError(400, str(exc), param="prompt") from exc
    asked = Asked(
        f"cmpl-{uuid.uuid4().hex}", caller.user(body.user), "completion", [{"prompt": prompt}]
    )
    return await _answer(state, engine, target, asked, prompt, body, body.max_tokens)


@router.get("/v1/models", response_model=ModelList, response_model_exclude_unset=True)
async def list_models(state: State, _caller: CurrentCaller) -> dict[str, Any]:
    return {"object": "list", "data": await run_in_threadpool(model_cards, state)}
