"""llama.cpp server compatibility: /completion (also at /completions), /tokenize, /detokenize,
/apply-template, /props, /slots, /metrics, and /lora-adapters, with the request and response
shapes of llama.cpp's ``tools/server/README.md``.

Where llama.cpp's ideas and selftune's differ, the mapping is:

- an "adapter" is a stored version with an artifact: its ``id`` is the version id;
- ``POST /lora-adapters`` moves the serving alias (promote a gated version, or back to the base),
  so it takes scale 1.0 or 0.0 only: the alias has no scale. Other scales work per request,
  through the ``lora`` field, on engines that support them (llama.cpp);
- there is one slot and no prompt cache, so ``id_slot`` is 0 and ``tokens_cached`` is 0.

``/completion`` answers are recorded as interactions exactly like ``/v1/completions``; the
response carries the interaction ``id`` (for ``POST /api/feedback``) and ``system_fingerprint``.
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from selftune import __version__
from selftune.api.auth import Caller
from selftune.api.deps import CurrentCaller, ReadyEngine, State, admin_caller
from selftune.api.errors import ApiError, error_body
from selftune.api.generation import (
    Asked,
    Generation,
    checked_prompt,
    count_prompt_tokens,
    room_for,
    version_headers,
    whole_answer,
)
from selftune.api.logprobs import llama_probabilities
from selftune.api.manage import move_alias
from selftune.api.options import (
    check_params,
    logit_bias,
    refuse_unsupported,
    sampler_options,
    structure,
)
from selftune.api.responses import (
    ERRORS,
    AppliedTemplate,
    Detokenized,
    LlamaCompletion,
    LoraAdapter,
    PrometheusResponse,
    Props,
    Slot,
    Success,
    Tokens,
    event_stream,
    plain_text,
)
from selftune.api.schemas import (
    ApplyTemplateRequest,
    DetokenizeRequest,
    LlamaCompletionRequest,
    LoraScale,
    TokenizeRequest,
)
from selftune.api.state import AppState
from selftune.api.store_metrics import scrape
from selftune.api.targets import (
    Target,
    artifact_path,
    has_artifact,
    target_of,
    versions_with_artifacts,
)
from selftune.api.tools import prompt_messages, renders_tool_turns
from selftune.engines.base import Chunk, Engine, GenerationParams, Prompt, TokenLogprob
from selftune.registry import versions as registry
from selftune.store.schema import Version

__all__ = ["router"]

router = APIRouter(responses=ERRORS)


# --- /completion ---------------------------------------------------------------------------
_COMPLETION_STREAM = event_stream(
    'The answer, with a summary of how it was made. With "stream": true, server-sent '
    "events instead: `data: <chunk>` lines, each with one piece of the text in `content` "
    "(and `index`, `tokens`, `stop`: false, `id_slot`, `tokens_predicted`, "
    "`tokens_evaluated`), then the object above with an empty `content`. If recording the "
    "answer fails, an error body comes last instead.",
    'data: {"index": 0, "content": "Hi", "tokens": [], "stop": false, "id_slot": 0, '
    '"tokens_predicted": 1, "tokens_evaluated": 4}\n\n'
    'data: {"index": 0, "id": "cmpl-...", "content": "", "stop": true, ...}\n\n',
)


# llama-server's /completions is this route too, not OpenAI's (that is /v1/completions).
@router.post("/completion", response_model=LlamaCompletion, responses=_COMPLETION_STREAM)
@router.post("/completions", response_model=LlamaCompletion, responses=_COMPLETION_STREAM)
async def completion(
    body: LlamaCompletionRequest,
    request: Request,
    state: State,
    caller: CurrentCaller,
    engine: ReadyEngine,
) -> Response:
    target = await target_of(state, engine.name, body.model, body.lora)
    refuse_unsupported(body, "llama", greedy=_temperature(state, body) <= 0)
    prompt, prompt_text, prompt_tokens = await _prompt(engine, body.prompt)
    params = _params(state, engine, body, prompt_tokens)
    asked = Asked(
        f"cmpl-{uuid.uuid4().hex}", caller.user(body.user), "completion", [{"prompt": prompt_text}]
    )
    generation = Generation(state, target, asked, prompt_tokens)
    chunks = generation.run(engine, prompt, params, match_stops=True)
    settings = _generation_settings(engine, target, body, params)
    headers = version_headers(target)
    if body.stream:
        events = _sse(chunks, generation, settings, prompt_text, body)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    await whole_answer(chunks, request)
    await run_in_threadpool(generation.record)
    final = _final(generation, settings, prompt_text, content=generation.text)
    final["tokens"] = _tokens(generation.logprobs, body)
    if body.n_probs > 0:
        final["completion_probabilities"] = llama_probabilities(generation.logprobs)
    return JSONResponse(final, headers=headers)


def _tokens(tokens: Sequence[TokenLogprob], body: LlamaCompletionRequest) -> list[int]:
    """The generated token ids, when return_tokens asks for them (else llama.cpp's [])."""
    return [token.token for token in tokens] if body.return_tokens else []


async def _prompt(engine: Engine, prompt: str | list[int]) -> tuple[Prompt, str, int]:
    """(what the engine gets, the prompt as text for the record, its length in tokens)."""
    if isinstance(prompt, str):
        return prompt, prompt, await count_prompt_tokens(engine, prompt)
    try:
        text = await run_in_threadpool(engine.detokenize, prompt)
    except Exception as exc:
        raise ApiError(
            400, f"the prompt has token ids this model does not have: {exc}", param="prompt"
        ) from exc
    return prompt, text, len(prompt)


def _temperature(state: AppState, body: LlamaCompletionRequest) -> float:
    default = state.settings.serve.default_temperature
    return default if body.temperature is None else body.temperature


def _params(
    state: AppState, engine: Engine, body: LlamaCompletionRequest, prompt_tokens: int
) -> GenerationParams:
    # llama.cpp: n_predict -1 generates until the context is full; absent, the server default.
    n_predict = None if body.n_predict == -1 else body.n_predict
    room = room_for(engine, prompt_tokens, n_predict, "n_predict")
    shape = structure(body, n_predict or room)
    if body.n_predict is None:
        # A structured answer may use the rest of the context: its grammar ends it in time.
        default = state.settings.serve.default_max_tokens
        max_tokens = room if shape.from_schema else min(default, room)
    else:
        max_tokens = room if n_predict is None else n_predict
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=max(_temperature(state, body), 0.0),  # llama.cpp: below zero is greedy
        top_p=body.top_p,
        stop=body.stops(),
        seed=None if body.seed < 0 else body.seed,
        grammar=shape.grammar,
        logit_bias=logit_bias(engine, body.logit_bias),
        # Token ids come with the log-probabilities: asked for with n_probs 0 for the ids alone.
        top_logprobs=body.n_probs if body.n_probs > 0 else 0 if body.return_tokens else None,
        ignore_eos=body.ignore_eos,
        **sampler_options(body),
    )
    check_params(engine, params, shape.param)
    return params


def _generation_settings(
    engine: Engine, target: Target, body: LlamaCompletionRequest, params: GenerationParams
) -> dict[str, Any]:
    """llama.cpp's ``generation_settings``: the options this request actually ran with."""
    adapter = target.adapter
    # Only stored versions have llama.cpp adapter ids; a runtime adapter shows in "model".
    lora = []
    if adapter is not None and target.version_id is not None:
        lora = [{"id": target.version_id, "scale": adapter.scale}]
    return {
        "n_ctx": engine.context_length,
        "n_predict": params.max_tokens,
        "model": target.model,
        "seed": body.seed,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "stream": body.stream,
        "lora": lora,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "repeat_last_n": params.penalty_last_n,
        "repeat_penalty": params.repeat_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "n_probs": body.n_probs,
        "ignore_eos": params.ignore_eos,
        "grammar": params.grammar or "",
        # llama.cpp's form; a banned token's bias (minus infinity) is null in JSON.
        "logit_bias": [
            {"bias": bias if math.isfinite(bias) else None, "token": token}
            for token, bias in params.logit_bias
        ],
    }


def _stop_type(generation: Generation) -> str:
    if generation.stop_word:
        return "word"
    return "eos" if generation.finish == "stop" else "limit"


def _final(
    generation: Generation, settings: dict[str, Any], prompt_text: str, *, content: str
) -> dict[str, Any]:
    """The last response object: the whole text (or "" at the end of a stream) and a summary."""
    return {
        "index": 0,
        "id": generation.asked.interaction_id,
        "content": content,
        "tokens": [],
        "id_slot": 0,
        "stop": True,
        "model": generation.target.model,
        "system_fingerprint": generation.target.name,
        "tokens_predicted": generation.completion_tokens,
        "tokens_evaluated": generation.prompt_tokens,
        "generation_settings": settings,
        "prompt": prompt_text,
        "has_new_line": "\n" in generation.text,
        "truncated": False,
        "stop_type": _stop_type(generation),
        "stopping_word": generation.stop_word,
        "tokens_cached": 0,
        "timings": generation.timings().as_llamacpp(),
    }


async def _sse(
    chunks: AsyncGenerator[Chunk, None],
    generation: Generation,
    settings: dict[str, Any],
    prompt_text: str,
    request: LlamaCompletionRequest,
) -> AsyncIterator[str]:
    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body)}\n\n"

    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if chunk.text:
                body = {
                    "index": 0,
                    "content": chunk.text,
                    "tokens": _tokens(chunk.logprobs, request),
                    "stop": False,
                    "id_slot": 0,
                    "tokens_predicted": chunk.completion_tokens,
                    "tokens_evaluated": generation.prompt_tokens,
                }
                if request.n_probs > 0:
                    body["completion_probabilities"] = llama_probabilities(chunk.logprobs)
                yield event(body)
    try:
        await run_in_threadpool(generation.record)
    except Exception as exc:
        yield event(error_body(f"the answer could not be recorded: {exc}", "server_error"))
        return
    yield event(_final(generation, settings, prompt_text, content=""))


# --- tokens --------------------------------------------------------------------------------
@router.post("/tokenize", response_model=Tokens)
async def tokenize(
    body: TokenizeRequest, _caller: CurrentCaller, engine: ReadyEngine
) -> dict[str, Any]:
    if not body.parse_special:
        raise ApiError(
            400,
            "parse_special=false is not supported: special tokens written in the text are "
            "always parsed; leave it out",
            param="parse_special",
        )

    def run() -> list[Any]:
        ids = engine.tokenize(body.content, add_special=body.add_special)
        if not body.with_pieces:
            return ids
        # A piece that is part of a multi-byte character decodes to U+FFFD on its own.
        return [{"id": token, "piece": engine.detokenize([token])} for token in ids]

    return {"tokens": await run_in_threadpool(run)}


@router.post("/detokenize", response_model=Detokenized)
async def detokenize(
    body: DetokenizeRequest, _caller: CurrentCaller, engine: ReadyEngine
) -> dict[str, Any]:
    try:
        content = await run_in_threadpool(engine.detokenize, body.tokens)
    except Exception as exc:
        raise ApiError(
            400, f"these are not token ids of this model: {exc}", param="tokens"
        ) from exc
    return {"content": content}


@router.post("/apply-template", response_model=AppliedTemplate)
async def apply_template(
    body: ApplyTemplateRequest, state: State, _caller: CurrentCaller, engine: ReadyEngine
) -> dict[str, Any]:
    """The prompt ``/v1/chat/completions`` would answer these messages from, unanswered: the
    template of the version ``model`` names (the served one by default), or ``chat_template``."""
    if not body.add_generation_prompt:
        raise ApiError(
            400,
            "add_generation_prompt=false is not supported: the prompt always ends where the "
            "assistant's answer starts; leave it out",
            param="add_generation_prompt",
        )
    target = await target_of(state, engine.name, body.model, None)
    template = body.chat_template or target.chat_template

    def render(messages: list[dict[str, str]]) -> str:
        return engine.render_chat(messages, template)

    # Earlier tool calls and their results written out, as chat completions does.
    messages = prompt_messages(body.messages, None, lambda: renders_tool_turns(render))
    return {"prompt": checked_prompt(render, messages, bool(body.chat_template))}


# --- server properties, slots and metrics --------------------------------------------------
@router.get("/props", response_model=Props)
async def props(state: State, _caller: CurrentCaller, engine: ReadyEngine) -> dict[str, Any]:
    source = await run_in_threadpool(state.base_source)
    serving = state.serving
    settings = state.settings
    params = {
        "n_predict": settings.serve.default_max_tokens,
        "seed": -1,
        "temperature": settings.serve.default_temperature,
        "top_p": 1.0,
        "stop": [],
        "max_tokens": settings.serve.default_max_tokens,
        "stream": False,
        "lora": [{"id": serving.version_id, "scale": 1.0}] if serving.version_id else [],
    }
    busy = state.metrics.busy()
    # The template the served version trained with; for the base, the engine's own.
    template = serving.chat_template or getattr(engine, "default_template", None)
    return {
        "default_generation_settings": {
            "id": 0,
            "id_task": -1,
            "n_ctx": engine.context_length,
            "speculative": False,
            "is_processing": busy,
            "params": params,
            "prompt": "",
        },
        "total_slots": 1,
        "model_path": source.location,
        "model_alias": settings.serve.model_name,
        "chat_template": template or settings.serve.chat_template,
        "modalities": {"vision": False, "audio": False},
        "build_info": f"selftune-{__version__}",
        "is_sleeping": False,
        # selftune: what serves, and which version answers the served name.
        "engine": engine.name,
        "serving": {"version": serving.name, "version_id": serving.version_id},
    }


@router.get("/slots", response_model=list[Slot])
async def slots(
    state: State,
    _caller: CurrentCaller,
    engine: ReadyEngine,
    fail_on_no_slot: Annotated[
        str | None, Query(description="any value: 503 when the slot is busy")
    ] = None,
) -> list[dict[str, Any]]:
    """llama.cpp's slots, read-only: selftune has one, and answers one request at a time."""
    busy = state.metrics.busy()
    if busy and fail_on_no_slot is not None:
        raise ApiError(
            503,
            "no slot available: the server answers one request at a time and is answering "
            "one now; retry shortly",
            type="server_error",
            code="no_slot_available",
        )
    slot = {"id": 0, "id_task": -1, "n_ctx": engine.context_length, "speculative": False,
            "is_processing": busy}  # fmt: skip
    return [slot]


@router.get(
    "/metrics",
    response_class=PrometheusResponse,
    responses=plain_text(
        "llama.cpp's metrics, then selftune's (selftune_...: feedback, jobs, the training "
        "queue, the autopilot, the last training run), in Prometheus' text format",
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 42.0\n",
        PrometheusResponse.media_type,
    ),
)
async def metrics(state: State, caller: CurrentCaller) -> PrometheusResponse:
    """Prometheus metrics: llama.cpp's, then selftune's from the store (a user's key: its own
    interactions, feedback, jobs and examples; an admin's everyone's)."""
    # Served while the model loads too: a scraper should see the server before its first answer.
    # The header is llama-server's: a scraper that sees it change knows the counters restarted.
    start = {"Process-Start-Time-Unix": str(state.metrics.started_unix)}
    return PrometheusResponse(await run_in_threadpool(scrape, state, caller), headers=start)


# --- adapters ------------------------------------------------------------------------------
@router.get("/lora-adapters", response_model=list[LoraAdapter])
async def list_lora_adapters(state: State, _caller: CurrentCaller) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        with state.db.read() as session:
            served = registry.serving_target(session).version_id
            rows = session.scalars(select(Version).order_by(Version.id)).all()
        return [
            {
                "id": v.id,
                "path": str(artifact_path(v)),
                "scale": 1.0 if v.id == served else 0.0,
                "name": v.name,  # selftune: the version's name, usable as `model`
            }
            for v in rows
            if has_artifact(v)
        ]

    return await run_in_threadpool(read)


@router.post("/lora-adapters", response_model=Success)
async def set_lora_adapters(
    body: list[LoraScale],
    state: State,
    caller: Annotated[Caller, admin_caller("setting the served adapter")],
) -> dict[str, Any]:
    """Set what the served name answers with: one version at scale 1, or none (the base)."""
    version_id = await run_in_threadpool(_default_version, state, body)
    actor = caller.user(None)
    reason = "set through POST /lora-adapters"

    def apply(session: Any) -> None:
        if registry.alias_stack(session)[-1] == version_id:
            return  # already served: setting the same scales again changes nothing
        if version_id is None:
            registry.rollback_to_base(session, actor=actor, reason=reason)
        else:
            registry.promote(session, version_id, actor=actor, reason=reason)

    await move_alias(state, apply)
    return {"success": True}


def _default_version(state: AppState, entries: list[LoraScale]) -> int | None:
    """The version the scales ask to serve by default, None for the base; a 400 otherwise."""
    active = [entry for entry in entries if entry.scale != 0]
    if len(active) > 1:
        raise ApiError(
            400,
            "selftune serves one version by default: give a non-zero scale to at most one "
            "adapter (all zero serves the base model)",
        )
    with state.db.read() as session:
        versions_with_artifacts(session, [entry.id for entry in entries])
    if not active:
        return None
    if active[0].scale != 1.0:
        raise ApiError(
            400,
            f"the served version has no scale: send scale 1.0 to serve adapter {active[0].id} or "
            f"0.0 for none, not {active[0].scale}; for other scales use the per-request 'lora' "
            "field of /completion",
        )
    return active[0].id
