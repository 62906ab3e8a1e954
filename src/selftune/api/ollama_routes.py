"""ollama-compatible routes, on the same server: ``/api/chat``, ``/api/generate``, the
embeddings, the model listings, and ``/``.

Generation goes through :class:`Generation`, as on the OpenAI routes: ``model`` picks what
answers (the served name, a version name, ``base``, a runtime adapter; a ``:latest`` tag is
dropped), each answer is recorded as an interaction before its last line is sent, and its id
comes back in the last object's ``interaction_id`` and the ``X-Selftune-Interaction-Id``
header, for ``POST /api/feedback``. Answers stream by default as NDJSON (one JSON object a
line, the last with ``done: true`` and the counts, durations in nanoseconds); an error after
the first line is a line ``{"error": "..."}``.

Errors are ollama's ``{"error": "..."}`` with the status, whatever raised them: the routes use
:class:`_OllamaRoute`, which answers them before the app's OpenAI-shaped handlers would.
``options`` and ``format`` are read by api/ollama_options.py; tools are api/tools.py's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from selftune.api import dashboard
from selftune.api.deps import CurrentCaller, ReadyEngine, State
from selftune.api.embeddings import embed_for
from selftune.api.errors import ApiError
from selftune.api.generation import (
    Asked,
    Generation,
    checked_prompt,
    count_prompt_tokens,
    room_for,
    version_headers,
    whole_answer,
)
from selftune.api.ollama_options import OllamaOptions, format_structure, read_options
from selftune.api.ollama_schemas import (
    OllamaChatChunk,
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbeddingsResponse,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    OllamaError,
    OllamaGenerateChunk,
    OllamaGenerateRequest,
    OllamaMessage,
    OllamaProcesses,
    OllamaShow,
    OllamaShowRequest,
    OllamaTags,
    OllamaVersion,
)
from selftune.api.options import check_params
from selftune.api.responses import VERSION_HEADER
from selftune.api.schemas import CalledFunction, ChatMessage, ChatRequest, ToolCall
from selftune.api.state import AppState
from selftune.api.targets import Target, model_cards, model_names, target_of
from selftune.api.tools import CallStream, ToolUse, prompt_messages, renders_tool_turns, tool_use
from selftune.engines.base import Chunk, Engine, GenerationParams, InvalidRequest
from selftune.store.schema import Version

__all__ = ["OLLAMA_VERSION", "router"]

# The ollama release whose API these routes follow: clients check it before using features.
OLLAMA_VERSION = "0.12.0"
INTERACTION_HEADER = "X-Selftune-Interaction-Id"
_STARTED = dt.datetime.now(dt.UTC)  # modified_at of names with no version behind them


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _OllamaRoute(APIRoute):
    """A route whose errors are ollama's ``{"error": "..."}`` bodies: a dependency's (401,
    503), a body that does not validate (400), the handler's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc.status, exc.message, exc.headers)
            except InvalidRequest as exc:
                return _error(400, str(exc))
            except RequestValidationError as exc:
                return _error(400, _validation_message(exc))
            except StarletteHTTPException as exc:
                return _error(exc.status_code, str(exc.detail), exc.headers)
            except Exception as exc:
                return _error(500, f"internal error: {type(exc).__name__}")

        return answer


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"invalid request{f' at {where!r}' if where else ''}: {first.get('msg', 'invalid')}"


_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": OllamaError,
        "description": "Refused: an invalid request (400), no or a bad API key (401), no model "
        "with that name (404).",
    },
    "5XX": {
        "model": OllamaError,
        "description": "Failed: an internal error (500), or the model is still loading (503).",
    },
}

router = APIRouter(route_class=_OllamaRoute, responses=_ERRORS)

_HEADERS = {
    **VERSION_HEADER,
    INTERACTION_HEADER: {
        "description": "the recorded interaction, for POST /api/feedback",
        "schema": {"type": "string"},
    },
}


def _ndjson(description: str, example: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "headers": _HEADERS,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}, "example": example}},
        }
    }


def _now() -> str:
    return _timestamp(dt.datetime.now(dt.UTC))


def _timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


async def _target(state: AppState, engine: Engine, model: str) -> Target:
    name = model.removesuffix(":latest")
    try:
        return await target_of(state, engine.name, name, None)
    except ApiError as exc:
        if exc.code != "model_not_found":
            raise
        names = ", ".join(await run_in_threadpool(model_names, state))
        raise ApiError(
            404, f"model {model!r} not found; selftune serves {names} (see GET /api/tags)"
        ) from exc


def _refuse(value: Any, field: str, why: str) -> None:
    if value:
        raise ApiError(400, f"{field} is not supported: selftune {why}. Leave it out.")


def _refuse_common(body: OllamaChatRequest | OllamaGenerateRequest) -> None:
    _refuse(body.think, "think", "serves no thinking model")
    where = "gives log-probabilities on /v1/chat/completions and /completion only"
    _refuse(body.logprobs or body.top_logprobs, "logprobs", where)


# --- generation ------------------------------------------------------------------------------
class _Shape:
    """How one route writes its objects: chat's ``message``, or generate's ``response``."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model

    def piece(self, text: str, call: dict[str, Any] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if call is not None:
                message["tool_calls"] = [call]
            obj["message"] = message
        else:
            obj["response"] = text
        obj["done"] = False
        return obj

    def loaded(self) -> JSONResponse:
        """ollama's answer to a request with nothing to answer: the model is loaded."""
        return JSONResponse({**self.piece(""), "done": True, "done_reason": "load"})


def _done(generation: Generation, started_ns: int) -> dict[str, Any]:
    timings = generation.timings()
    return {
        "done": True,
        "done_reason": "length" if generation.finish == "length" else "stop",
        "total_duration": time.perf_counter_ns() - started_ns,
        "load_duration": 0,  # the model is loaded once, when the server starts
        "prompt_eval_count": timings.prompt_n,
        "prompt_eval_duration": round(timings.prompt_seconds * 1e9),
        "eval_count": timings.predicted_n,
        "eval_duration": round(timings.predicted_seconds * 1e9),
        "interaction_id": generation.asked.interaction_id,
    }


def _params(
    state: AppState,
    engine: Engine,
    options: OllamaOptions,
    format: Any,
    prompt_tokens: int,
) -> GenerationParams:
    unlimited = options.num_predict in (-1, -2)
    requested = None if unlimited else options.num_predict
    room = room_for(engine, prompt_tokens, requested, "options.num_predict")
    shape = format_structure(format, requested or room)
    # A structured answer may use the rest of the context: its grammar ends it in time.
    default = min(state.settings.serve.default_max_tokens, room)
    if unlimited or shape.from_schema:
        default = room
    temperature = options.temperature
    if temperature is None:
        temperature = state.settings.serve.default_temperature
    params = GenerationParams(
        max_tokens=requested or default,
        temperature=temperature,
        top_p=options.top_p,
        stop=options.stops(),
        seed=options.seed,
        grammar=shape.grammar,
        repeat_penalty=options.repeat_penalty,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        penalty_last_n=options.repeat_last_n,
        top_k=options.top_k,
        min_p=options.min_p,
    )
    check_params(engine, params, shape.param)
    return params


async def _answer(
    request: Request,
    state: AppState,
    engine: Engine,
    target: Target,
    asked: Asked,
    prompt: str,
    body: OllamaChatRequest | OllamaGenerateRequest,
    shape: _Shape,
    tools: ToolUse | None = None,
) -> Response:
    started_ns = time.perf_counter_ns()
    if not prompt.strip():
        raise ApiError(400, "the prompt is empty once rendered: there is nothing to answer from")
    options = read_options(body.options, state.settings.serve.default_temperature)
    prompt_tokens = await count_prompt_tokens(engine, prompt)
    params = _params(state, engine, options, body.format, prompt_tokens)
    generation = Generation(state, target, asked, prompt_tokens)
    headers = {**version_headers(target), INTERACTION_HEADER: asked.interaction_id}
    chunks = generation.run(engine, prompt, params)
    if body.stream:
        lines = _stream(chunks, generation, shape, tools, started_ns)
        return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)
    await whole_answer(chunks, request)
    call = tools.find_call(generation.text) if tools else None
    if call is not None:
        generation.finish = "tool_calls"
    await run_in_threadpool(generation.record)
    obj = shape.piece("", _ollama_call(call)) if call else shape.piece(generation.text)
    return JSONResponse({**obj, **_done(generation, started_ns)}, headers=headers)


def _ollama_call(call: Any) -> dict[str, Any]:
    return {"function": {"name": call.name, "arguments": json.loads(call.arguments)}}


async def _stream(
    chunks: AsyncGenerator[Chunk, None],
    generation: Generation,
    shape: _Shape,
    tools: ToolUse | None,
    started_ns: int,
) -> AsyncIterator[str]:
    """The answer's pieces as lines (text that may be a tool call held to the end), then the
    last object, after the answer is recorded; an error line instead if anything fails."""
    calls = CallStream(tools)
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if text := calls.feed(chunk.text):
                    yield _line(shape.piece(text))
        text, call = calls.finish()
        if text:
            yield _line(shape.piece(text))
        if call is not None:
            generation.finish = "tool_calls"
        await run_in_threadpool(generation.record)
    except Exception as exc:
        yield _line({"error": f"the answer failed: {exc}"})
        return
    last = shape.piece("", _ollama_call(call)) if call is not None else shape.piece("")
    yield _line({**last, **_done(generation, started_ns)})


def _chat_messages(messages: list[OllamaMessage]) -> list[ChatMessage]:
    """ollama's messages as the chat route's: calls' arguments as JSON text, a tool's result
    under the name of the function that returned it."""
    converted = []
    for i, message in enumerate(messages):
        if message.images:
            raise ApiError(400, f"messages[{i}].images: selftune answers text only")
        calls = [
            ToolCall(
                id=f"call_{i}_{j}",
                function=CalledFunction(
                    name=call.function.name, arguments=json.dumps(call.function.arguments)
                ),
            )
            for j, call in enumerate(message.tool_calls or [])
        ]
        converted.append(
            ChatMessage(
                role=message.role,
                content=message.content,
                tool_calls=calls or None,
                tool_call_id=None,
                name=message.tool_name,
            )
        )
    return converted


def _tool_use(body: OllamaChatRequest, messages: list[ChatMessage]) -> ToolUse | None:
    if not body.tools:
        return None
    if body.format:
        raise ApiError(400, "send format or tools, not both: each sets the form of the answer")
    try:
        request = ChatRequest.model_validate({"messages": messages, "tools": body.tools})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ApiError(400, f"invalid request at {where!r}: {first.get('msg')}") from exc
    return tool_use(request)


_CHAT_STREAM = _ndjson(
    'The answer, as one object with "stream": false. Streamed (the default): NDJSON, one '
    "such object a line, each with a piece of the text in `message.content` and `done: "
    "false`; the last with `done: true`, `done_reason`, the counts and durations (ns) and "
    '`interaction_id`, sent once the answer is recorded; an error as a line `{"error"}`.',
    '{"model": "selftune", "created_at": "...", "message": {"role": "assistant", "content": '
    '"Hi"}, "done": false}\n{"model": "selftune", ..., "done": true, "done_reason": "stop", '
    '"eval_count": 2, ...}\n',
)


@router.post("/api/chat", response_model=OllamaChatChunk, responses=_CHAT_STREAM)
async def chat(
    body: OllamaChatRequest,
    request: Request,
    state: State,
    caller: CurrentCaller,
    engine: ReadyEngine,
) -> Response:
    target = await _target(state, engine, body.model)
    shape = _Shape(True, body.model)
    if not body.messages:
        return shape.loaded()
    _refuse_common(body)
    messages = _chat_messages(body.messages)
    tools = _tool_use(body, messages)

    def render(turns: list[dict[str, str]]) -> str:
        return engine.render_chat(turns, target.chat_template)

    # The messages as the model sees them (tool calls and results written out): recorded so.
    turns = prompt_messages(messages, tools, lambda: renders_tool_turns(render))
    prompt = checked_prompt(render, turns, template_sent=False)
    asked = Asked(f"chatcmpl-{uuid.uuid4().hex}", caller.user(None), "chat", turns)
    return await _answer(request, state, engine, target, asked, prompt, body, shape, tools)


@router.post(
    "/api/generate",
    response_model=OllamaGenerateChunk,
    responses=_ndjson(
        'The answer, as one object with "stream": false. Streamed (the default): NDJSON, as '
        "/api/chat's, with the text in `response`.",
        '{"model": "selftune", "created_at": "...", "response": "Hi", "done": false}\n'
        '{"model": "selftune", ..., "done": true, "done_reason": "stop", ...}\n',
    ),
)
async def generate(
    body: OllamaGenerateRequest,
    request: Request,
    state: State,
    caller: CurrentCaller,
    engine: ReadyEngine,
) -> Response:
    target = await _target(state, engine, body.model)
    shape = _Shape(False, body.model)
    if not body.prompt:
        return shape.loaded()
    _refuse_common(body)
    jinja = "renders the version's Jinja chat template, not ollama's Go templates; send "
    _refuse(body.template, "template", jinja + '"raw": true with the prompt written out')
    _refuse(body.suffix, "suffix", "does not insert text between a prompt and a suffix")
    stateless = "keeps no context between requests: send the conversation to /api/chat"
    _refuse(body.context, "context", stateless)
    _refuse(body.images, "images", "answers text only")
    interaction_id = f"cmpl-{uuid.uuid4().hex}"
    if body.raw:
        _refuse(body.system, "system with raw", "writes no template around a raw prompt")
        asked = Asked(interaction_id, caller.user(None), "completion", [{"prompt": body.prompt}])
        prompt = body.prompt
    else:
        system = [{"role": "system", "content": body.system}] if body.system else []
        turns = [*system, {"role": "user", "content": body.prompt}]
        try:
            prompt = engine.render_chat(turns, target.chat_template)
        except Exception as exc:
            raise ApiError(400, f"the chat template could not render the prompt: {exc}") from exc
        asked = Asked(interaction_id, caller.user(None), "chat", turns)
    return await _answer(request, state, engine, target, asked, prompt, body, shape)


# --- embeddings ------------------------------------------------------------------------------
@router.post("/api/embed", response_model=OllamaEmbedResponse)
async def embed(body: OllamaEmbedRequest, state: State, _caller: CurrentCaller) -> JSONResponse:
    _refuse(body.dimensions, "dimensions", "gives the model's own vectors, whole")
    started_ns = time.perf_counter_ns()
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors: list[list[float]] = []
    tokens = 0
    headers: dict[str, str] = {}
    if texts:
        model = body.model.removesuffix(":latest")
        embedder, vectors, tokens = await embed_for(state, model, texts)
        headers = {"X-Selftune-Version": embedder.version} if embedder.version else {}
    response = {
        "model": body.model,
        "embeddings": vectors,
        "total_duration": time.perf_counter_ns() - started_ns,
        "load_duration": 0,
        "prompt_eval_count": tokens,
    }
    return JSONResponse(response, headers=headers)


@router.post("/api/embeddings", response_model=OllamaEmbeddingsResponse)
async def embeddings(
    body: OllamaEmbeddingsRequest, state: State, _caller: CurrentCaller
) -> JSONResponse:
    if not body.prompt:
        return JSONResponse({"embedding": []})
    embedder, vectors, _ = await embed_for(state, body.model.removesuffix(":latest"), [body.prompt])
    headers = {"X-Selftune-Version": embedder.version} if embedder.version else {}
    return JSONResponse({"embedding": vectors[0]}, headers=headers)


# --- models ----------------------------------------------------------------------------------
def _details(state: AppState, parent: str) -> dict[str, Any]:
    engine = state.engine
    formats = {"llama.cpp": "gguf", "transformers": "safetensors"}
    return {
        "parent_model": parent,
        "format": formats.get(engine.name, "") if engine is not None else "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }


def _folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _tags(state: AppState) -> list[dict[str, Any]]:
    """Every name ``model`` accepts, as ollama lists models. Blocking: reads the store."""
    cards = model_cards(state)
    with state.db.read() as session:
        paths = {v.name: v.path for v in session.scalars(select(Version))}
    created = {card["id"]: card["created"] for card in cards if card["created"]}
    tags = []
    for card in cards:
        answers = card["version"]  # what answers under this name
        when = created.get(answers)
        modified = dt.datetime.fromtimestamp(when, dt.UTC) if when else _STARTED
        size = _folder_bytes(paths[answers]) if answers in paths else 0
        digest = hashlib.sha256(f"{card['id']}\0{answers}\0{when}".encode()).hexdigest()
        tags.append(
            {
                "name": card["id"],
                "model": card["id"],
                "modified_at": _timestamp(modified),
                "size": size,
                "digest": digest,
                "details": _details(state, card.get("parent", "")),
            }
        )
    return tags


@router.get("/api/tags", response_model=OllamaTags)
async def tags(state: State, _caller: CurrentCaller) -> dict[str, Any]:
    return {"models": await run_in_threadpool(_tags, state)}


@router.get("/api/ps", response_model=OllamaProcesses)
async def processes(state: State, _caller: CurrentCaller) -> dict[str, Any]:
    """The served name, once the model is loaded: it stays loaded while the server runs."""
    engine = state.engine
    if engine is None:
        return {"models": []}
    name = state.settings.serve.model_name
    tag = next(t for t in await run_in_threadpool(_tags, state) if t["name"] == name)
    running = {key: tag[key] for key in ("name", "model", "size", "digest", "details")}
    never = "9999-12-31T23:59:59Z"  # ollama's expires_at; selftune never unloads the model
    context = engine.context_length
    return {"models": [{**running, "expires_at": never, "size_vram": 0, "context_length": context}]}


def _architecture(state: AppState) -> str:
    """The base model's architecture (its config.json's ``model_type``), where it is known."""
    with contextlib.suppress(Exception):
        config = json.loads((state.base_folder() / "config.json").read_text(encoding="utf-8"))
        return str(config.get("model_type") or "unknown")
    return "unknown"


@router.post("/api/show", response_model=OllamaShow)
async def show(
    body: OllamaShowRequest, state: State, _caller: CurrentCaller, engine: ReadyEngine
) -> dict[str, Any]:
    asked = body.model or body.name
    if not asked:
        raise ApiError(400, "send the model's name in 'model'")
    target = await _target(state, engine, asked)
    settings = state.settings.serve
    template = target.chat_template or getattr(engine, "default_template", None)
    parameters = {
        "temperature": settings.default_temperature,
        "num_predict": settings.default_max_tokens,
        "num_ctx": engine.context_length,
    }
    lines = "\n".join(f"{key} {value}" for key, value in parameters.items())
    tag = next(
        (t for t in await run_in_threadpool(_tags, state) if t["name"] == target.model),
        None,
    )
    arch = await run_in_threadpool(_architecture, state)
    modelfile = "\n".join(
        [f"# selftune: {asked} is answered by {target.name}", f"FROM {target.model}"]
        + [f"PARAMETER {line}" for line in lines.splitlines()]
    )
    return {
        "modelfile": modelfile + "\n",
        "parameters": lines,
        "template": template or settings.chat_template or "",
        "details": _details(state, "" if target.name == "base" else "base"),
        "model_info": {
            "general.architecture": arch,
            "general.base_model": state.settings.base_model,
            f"{arch}.context_length": engine.context_length,
        },
        "capabilities": ["completion", "tools"],
        "modified_at": tag["modified_at"] if tag else _timestamp(_STARTED),
    }


@router.get("/api/version", response_model=OllamaVersion)
async def version() -> dict[str, str]:
    """Open like ``/health``: clients ask it before anything else."""
    return {"version": OLLAMA_VERSION}


# --- / ---------------------------------------------------------------------------------------
_RUNNING = "Ollama is running"
_OLLAMA_ERROR_REF = "#/components/schemas/OllamaError"


def _wants_html(accept: str) -> bool:
    """Whether a browser asks: ``Accept`` names HTML (with a non-zero q) explicitly."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media in ("text/html", "application/xhtml+xml") and "q=0" not in params:
            return True
    return False


@router.get(
    "/",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": f"{_RUNNING!r}, as ollama answers: clients check that a server "
            "runs; a browser (Accept: text/html) gets the dashboard's page",
            "content": {
                "text/plain": {"schema": {"type": "string"}, "example": _RUNNING},
                "text/html": {"schema": {"type": "string"}},
            },
        },
        # Filed under JSON, not the route's text/plain: errors are JSON everywhere.
        **{
            code: {
                "description": response["description"],
                "content": {"application/json": {"schema": {"$ref": _OLLAMA_ERROR_REF}}},
            }
            for code, response in _ERRORS.items()
        },
    },
)
async def root(request: Request) -> Response:
    if _wants_html(request.headers.get("accept", "")):
        return dashboard.page_response()
    return PlainTextResponse(_RUNNING)


@router.head("/", include_in_schema=False)
async def root_head() -> Response:
    return PlainTextResponse(_RUNNING)
