"""OpenAI-compatible routes: chat completions, completions, models.

Each answer is recorded as an interaction (who asked, the version that answered, the messages,
the answer, token counts, latency) and committed before the client gets the end of the answer:
the response ``id`` is the interaction's id, for ``POST /api/feedback``.

``model`` picks what answers (the served name, a version name, ``base``, a runtime adapter), and
so does llama.cpp's ``lora`` field, which llama.cpp's server also accepts on these routes.

What a request asks beyond its prompt (structured output, sampler options, what is refused) is
read by api/options.py; tool calls are api/tools.py's, log-probabilities' shapes api/logprobs.py's.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from selftune.api.chat_memory import retrieve
from selftune.api.deps import CurrentCaller, ReadyEngine, State
from selftune.api.embeddings import embedding_model_cards
from selftune.api.errors import ApiError, error_body, storage_error
from selftune.api.generation import (
    Asked,
    Generation,
    checked_prompt,
    count_prompt_tokens,
    room_for,
    version_headers,
    whole_answer,
)
from selftune.api.logprobs import TextOffsets, chat_logprobs, completion_logprobs
from selftune.api.memory import checked_tags
from selftune.api.options import (
    check_params,
    logit_bias,
    refuse_unsupported,
    sampler_options,
    structure,
)
from selftune.api.responses import (
    ERRORS,
    ChatCompletion,
    ModelCard,
    ModelList,
    TextCompletion,
    event_stream,
)
from selftune.api.schemas import ChatRequest, CompletionRequest
from selftune.api.state import AppState
from selftune.api.targets import Target, model_cards, target_of
from selftune.api.tools import CallStream, ToolUse, prompt_messages, renders_tool_turns, tool_use
from selftune.engines.base import Chunk, Engine, GenerationParams, TokenLogprob
from selftune.memory.retrieval import with_passages

__all__ = ["router"]

router = APIRouter(responses=ERRORS)


def _temperature(state: AppState, body: Any) -> float:
    default = state.settings.serve.default_temperature
    return default if body.temperature is None else float(body.temperature)


def _params(
    state: AppState,
    engine: Engine,
    body: Any,
    prompt_tokens: int,
    requested: int | None,
    tools: ToolUse | None,
) -> GenerationParams:
    room = room_for(engine, prompt_tokens, requested, "max_tokens")
    shape = structure(body, requested or room, tools)
    # A structured answer may use the rest of the context: its grammar ends it in time.
    default = room if shape.from_schema else min(state.settings.serve.default_max_tokens, room)
    params = GenerationParams(
        max_tokens=requested or default,
        temperature=_temperature(state, body),
        top_p=body.top_p,
        stop=body.stops(),
        seed=body.seed,
        grammar=shape.grammar,
        logit_bias=logit_bias(engine, body.logit_bias),
        top_logprobs=_top_logprobs(body),
        ignore_eos=body.ignore_eos,
        **sampler_options(body),
    )
    check_params(engine, params, shape.param)
    return params


def _top_logprobs(body: Any) -> int | None:
    """How many alternatives per token the request wants; None: no log-probabilities."""
    if isinstance(body, ChatRequest):
        return (body.top_logprobs or 0) if body.logprobs else None
    logprobs: int | None = body.logprobs
    return logprobs


async def _answer(
    request: Request,
    state: AppState,
    engine: Engine,
    target: Target,
    asked: Asked,
    prompt: str,
    body: Any,
    requested_max: int | None,
    tools: ToolUse | None = None,
) -> Response:
    prompt_tokens = await count_prompt_tokens(engine, prompt)
    params = _params(state, engine, body, prompt_tokens, requested_max, tools)
    generation = Generation(state, target, asked, prompt_tokens)
    headers = version_headers(target)
    envelope = {
        "id": asked.interaction_id,
        "created": int(time.time()),
        "model": target.model,
        "system_fingerprint": target.name,
    }
    chunks = generation.run(engine, prompt, params)
    with_logprobs = params.top_logprobs is not None
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        if asked.kind == "chat":
            stream = _chat_sse(
                chunks, envelope, generation, include_usage, tools, with_logprobs, asked.memory
            )
        else:
            stream = _text_sse(chunks, envelope, generation, include_usage, with_logprobs)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    await whole_answer(chunks, request)
    if asked.kind == "chat":
        call = tools.find_call(generation.text) if tools else None
        if call is not None:
            generation.finish = "tool_calls"
        message: dict[str, Any] = {"role": "assistant", "content": generation.text}
        if call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [call.as_openai()]}
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": generation.finish,
            "logprobs": chat_logprobs(generation.logprobs) if with_logprobs else None,
        }
        obj = "chat.completion"
    else:
        logprobs = completion_logprobs(generation.logprobs, TextOffsets())
        choice = {
            "index": 0,
            "text": generation.text,
            "finish_reason": generation.finish,
            "logprobs": logprobs if with_logprobs else None,
        }
        obj = "text_completion"
    usage = await run_in_threadpool(generation.record)
    body_out = {**envelope, "object": obj, "choices": [choice], "usage": usage}
    if asked.memory is not None:
        body_out["memory"] = asked.memory
    return JSONResponse(body_out, headers=headers)


def _event(envelope: dict[str, Any], obj: str, choice: dict[str, Any] | None, **extra: Any) -> str:
    choices = [choice] if choice is not None else []
    return f"data: {json.dumps({**envelope, 'object': obj, 'choices': choices, **extra})}\n\n"


async def _chat_sse(
    chunks: AsyncGenerator[Chunk, None],
    envelope: dict[str, Any],
    generation: Generation,
    include_usage: bool,
    tools: ToolUse | None,
    with_logprobs: bool,
    memory: list[dict[str, Any]] | None = None,
) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events: the role, the content as it comes (text that may be a
    tool call is held until the answer ends), any tool call, the finish reason, the usage. The
    first event also carries the memory passages the prompt was given, if any."""
    obj = "chat.completion.chunk"
    held: list[TokenLogprob] = []  # the log-probabilities of text not sent yet

    def delta(fields: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        logprobs = chat_logprobs(held) if with_logprobs and held else None
        held.clear()
        choice = {"index": 0, "delta": fields, "finish_reason": finish, "logprobs": logprobs}
        return _event(envelope, obj, choice, **extra)

    calls = CallStream(tools)
    a_call_is_required = tools is not None and tools.choice != "auto"
    role = {"role": "assistant", "content": None if a_call_is_required else ""}
    yield delta(role) if memory is None else delta(role, memory=memory)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            held += chunk.logprobs
            if text := calls.feed(chunk.text):
                yield delta({"content": text})
    text, call = calls.finish()
    if text:
        yield delta({"content": text})
    if call is not None:
        generation.finish = "tool_calls"
        header = {"index": 0, **call.as_openai(), "function": {"name": call.name, "arguments": ""}}
        yield delta({"tool_calls": [header]})
        yield delta({"tool_calls": [{"index": 0, "function": {"arguments": call.arguments}}]})
    yield delta({}, generation.finish)
    async for tail in _record_and_end(envelope, obj, generation, include_usage):
        yield tail


async def _text_sse(
    chunks: AsyncGenerator[Chunk, None],
    envelope: dict[str, Any],
    generation: Generation,
    include_usage: bool,
    with_logprobs: bool,
) -> AsyncIterator[str]:
    """``text_completion`` events, each with a piece of the text; the last with the finish."""
    offsets = TextOffsets()
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if chunk.text or chunk.finish_reason:
                logprobs = completion_logprobs(chunk.logprobs, offsets) if with_logprobs else None
                choice = {
                    "index": 0,
                    "text": chunk.text,
                    "finish_reason": chunk.finish_reason,
                    "logprobs": logprobs,
                }
                yield _event(envelope, "text_completion", choice)
    async for tail in _record_and_end(envelope, "text_completion", generation, include_usage):
        yield tail


async def _record_and_end(
    envelope: dict[str, Any], obj: str, generation: Generation, include_usage: bool
) -> AsyncIterator[str]:
    """Record the answer, then the usage event if asked for and ``[DONE]``; an error event
    instead if recording failed."""
    try:
        usage = await run_in_threadpool(generation.record)
    except OperationalError as exc:  # a full disk, a read-only store: say which, not the SQL
        error = storage_error(exc, generation.state.settings.data_dir)
        body = error_body(error.message, error.type, error.code)
        yield f"data: {json.dumps(body)}\n\n"
        return
    except Exception as exc:
        body = error_body(f"the answer could not be recorded: {exc}", "server_error")
        yield f"data: {json.dumps(body)}\n\n"
        return
    if include_usage:
        yield _event(envelope, obj, None, usage=usage)
    yield "data: [DONE]\n\n"


_STREAM = (
    'With "stream": true, server-sent events instead: `data: <chunk>` lines, each chunk the '
    "object above with one piece of the text in its choice (chat: a `chat.completion.chunk`, the "
    "text in `delta`), the last with `finish_reason`; with `stream_options.include_usage`, a "
    "chunk with `usage` and no choices; then `data: [DONE]`. The answer is recorded before "
    "`[DONE]`; if that fails, an error body comes instead of `[DONE]`."
)


_CHAT_STREAM = event_stream(
    f"The answer, as a `chat.completion` object. {_STREAM}",
    'data: {"id": "chatcmpl-...", "object": "chat.completion.chunk", "choices": '
    '[{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null, "logprobs": null}], '
    "...}\n\ndata: [DONE]\n\n",
)


# llama-server answers chat at /chat/completions too: clients configured without /v1 work.
@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_CHAT_STREAM)
@router.post("/chat/completions", response_model=ChatCompletion, responses=_CHAT_STREAM)
async def chat_completions(
    body: ChatRequest, request: Request, state: State, caller: CurrentCaller, engine: ReadyEngine
) -> Response:
    target = await target_of(state, engine.name, body.model, body.lora)
    refuse_unsupported(body, "chat", greedy=_temperature(state, body) <= 0)
    tools = tool_use(body)
    template = body.chat_template or target.chat_template

    def render(messages: list[dict[str, str]]) -> str:
        return engine.render_chat(messages, template)

    # The messages as the model sees them (tool calls and results written out): recorded so.
    messages = prompt_messages(body.messages, tools, lambda: renders_tool_turns(render))
    user = caller.user(body.user)
    passages = await retrieve(
        state, user, body.memory, messages, engine.count_tokens, engine.context_length
    )
    shown = with_passages(messages, passages or [])
    prompt = checked_prompt(render, shown, bool(body.chat_template))
    used = None if passages is None else [passage.view() for passage in passages]
    tags = checked_tags(body.tags, "tags")
    asked = Asked(
        f"chatcmpl-{uuid.uuid4().hex}", user, "chat", messages, body.chat_template, used, tags
    )
    requested = body.max_completion_tokens or body.max_tokens
    return await _answer(request, state, engine, target, asked, prompt, body, requested, tools)


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
    body: CompletionRequest,
    request: Request,
    state: State,
    caller: CurrentCaller,
    engine: ReadyEngine,
) -> Response:
    target = await target_of(state, engine.name, body.model, body.lora)
    refuse_unsupported(body, "completion", greedy=_temperature(state, body) <= 0)
    try:
        prompt = body.prompt_text()
    except ValueError as exc:
        raise ApiError(400, str(exc), param="prompt") from exc
    asked = Asked(
        f"cmpl-{uuid.uuid4().hex}", caller.user(body.user), "completion", [{"prompt": prompt}]
    )
    return await _answer(request, state, engine, target, asked, prompt, body, body.max_tokens)


def _all_model_cards(state: AppState) -> list[dict[str, Any]]:
    """The names generation accepts, then the dedicated embedding models'. Blocking."""
    return model_cards(state) + embedding_model_cards(state)


# llama-server lists its models at /models too.
@router.get("/v1/models", response_model=ModelList, response_model_exclude_unset=True)
@router.get("/models", response_model=ModelList, response_model_exclude_unset=True)
async def list_models(state: State, _caller: CurrentCaller) -> dict[str, Any]:
    return {"object": "list", "data": await run_in_threadpool(_all_model_cards, state)}


# ``:path``: a served name may hold a slash ("org/model"), as hub ids do.
@router.get(
    "/v1/models/{model_id:path}", response_model=ModelCard, response_model_exclude_unset=True
)
@router.get("/models/{model_id:path}", response_model=ModelCard, response_model_exclude_unset=True)
async def retrieve_model(model_id: str, state: State, _caller: CurrentCaller) -> dict[str, Any]:
    """OpenAI's model object for one name ``model`` accepts; a 404 for any other."""
    cards = await run_in_threadpool(_all_model_cards, state)
    for card in cards:
        if card["id"] == model_id:
            return card
    names = ", ".join(card["id"] for card in cards)
    raise ApiError(
        404,
        f"the model {model_id!r} does not exist; use one of {names} (see GET /v1/models)",
        code="model_not_found",
        param="model",
    )
