"""Proxy-and-learn: selftune in front of another OpenAI-compatible server (``[proxy]``).

With ``proxy.upstream_url`` set, this router takes ``/v1/chat/completions``, ``/chat/completions``
and ``/v1/completions`` ahead of the local ones. Each request goes to the upstream unchanged and
its answer comes back unchanged (a JSON body as it was sent, server-sent events byte for byte as
they arrive), and is recorded as an interaction: the upstream's model name, the messages, the
answer, its token counts, no headers and so no keys. Its id starts with ``upstream-`` (the
marker that the upstream answered) and comes back in the ``X-Selftune-Interaction`` header, for
``POST /api/feedback``. ``proxy.keep`` decides which chat answers become training examples
(data.curation.upstream_example), written in the interaction's transaction.

Once the served version's gate showed a held-out recall of at least ``proxy.local_min_recall``,
a share ``proxy.local_share`` of requests is answered by the local model through the ordinary
routes (openai_routes), and the upstream answers when that fails; when the upstream cannot be
reached, such a version answers too.

Keys: a selftune key (``serve.auth_required``) stays here and ``proxy.upstream_api_key`` goes
upstream; any other ``Authorization`` the client sends goes upstream as it is, and without one
the configured key does.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from selftune.api import openai_routes
from selftune.api.auth import Caller
from selftune.api.deps import CurrentCaller, State
from selftune.api.errors import ApiError, error_body
from selftune.api.responses import ERRORS
from selftune.api.schemas import ChatRequest, CompletionRequest
from selftune.api.state import AppState, ready_engine
from selftune.config import ProxySettings
from selftune.data.curation import upstream_example
from selftune.store.interactions import record_interaction
from selftune.store.schema import Version

__all__ = ["UPSTREAM_PREFIX", "Upstream", "close_proxy", "install_proxy", "router"]

log = logging.getLogger(__name__)

UPSTREAM_PREFIX = "upstream-"  # the ids of interactions the upstream answered
_DONE = b"data: [DONE]"
_PATHS = {"chat": "chat/completions", "completion": "completions"}  # below upstream_url

router = APIRouter(responses=ERRORS)


class Upstream:
    """The upstream server: one pooled HTTP client, and which versions may answer locally."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._recall: dict[int, float | None] = {}  # gate recall by version id, read once
        self.rng = random.Random()

    def client(self) -> httpx.AsyncClient:
        # Made on first use, on the server's event loop, which it belongs to.
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.settings.upstream_url,
                timeout=httpx.Timeout(self.settings.timeout_seconds, connect=10.0),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def local_is_good(self, state: AppState) -> bool:
        """Whether the served version's gate recall reaches ``local_min_recall``."""
        version_id = state.serving.version_id
        if version_id is None or state.engine is None:
            return False
        if version_id not in self._recall:
            self._recall[version_id] = await run_in_threadpool(_gate_recall, state, version_id)
        recall = self._recall[version_id]
        return recall is not None and recall >= self.settings.local_min_recall

    def headers(self, request: Request, caller: Caller) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        sent = request.headers.get("authorization")
        if sent and not caller.authenticated:  # a selftune key never leaves this server
            headers["authorization"] = sent
        elif self.settings.upstream_api_key:
            headers["authorization"] = f"Bearer {self.settings.upstream_api_key}"
        return headers


def _gate_recall(state: AppState, version_id: int) -> float | None:
    with state.db.read() as session:
        version = session.get(Version, version_id)
        figures = (version.gate or {}).get("figures") or {} if version is not None else {}
    recall = figures.get("new_recall_candidate")
    return float(recall) if recall is not None else None


def install_proxy(app: FastAPI, settings: ProxySettings) -> None:
    """Put the proxy's routes ahead of the local generation routes; call before including them."""
    app.state.upstream = Upstream(settings)
    app.include_router(router)


async def close_proxy(app: FastAPI) -> None:
    upstream: Upstream | None = getattr(app.state, "upstream", None)
    if upstream is not None:
        await upstream.aclose()


# Not in the OpenAPI document: the local routes' schemas describe the same paths.
@router.post("/v1/chat/completions", include_in_schema=False)
@router.post("/chat/completions", include_in_schema=False)
async def proxy_chat(request: Request, state: State, caller: CurrentCaller) -> Response:
    return await _handle(request, state, caller, "chat")


@router.post("/v1/completions", include_in_schema=False)
async def proxy_completions(request: Request, state: State, caller: CurrentCaller) -> Response:
    return await _handle(request, state, caller, "completion")


async def _handle(request: Request, state: AppState, caller: Caller, kind: str) -> Response:
    upstream: Upstream = request.app.state.upstream
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    share = upstream.settings.local_share
    if share > 0 and upstream.rng.random() < share and await upstream.local_is_good(state):
        local = await _answer_locally(request, state, caller, kind, body)
        if local is not None:
            return local
    try:
        return await _forward(upstream, request, state, caller, kind, raw, body)
    except httpx.TransportError as exc:
        if await upstream.local_is_good(state):
            local = await _answer_locally(request, state, caller, kind, body)
            if local is not None:
                return local
        raise ApiError(
            502,
            f"the upstream server {upstream.settings.upstream_url} could not be reached "
            f"({type(exc).__name__}: {exc}); check that it runs and proxy.upstream_url",
            type="server_error",
            code="upstream_unreachable",
        ) from exc


async def _answer_locally(
    request: Request, state: AppState, caller: Caller, kind: str, body: dict[str, Any]
) -> Response | None:
    """The local model's answer through the ordinary route, under the served name; None when
    it cannot answer (still loading, its queue full, a request it refuses, a failure)."""
    local = {**body, "model": state.settings.serve.model_name}
    try:
        engine = ready_engine(state)
        if kind == "chat":
            chat = ChatRequest.model_validate(local)
            return await openai_routes.chat_completions(chat, request, state, caller, engine)
        completion = CompletionRequest.model_validate(local)
        return await openai_routes.completions(completion, request, state, caller, engine)
    except Exception as exc:
        log.info("the local model did not answer (%s); the upstream answers", exc)
        return None


class _Record:
    """What is recorded of one forwarded request, once its answer is known."""

    def __init__(self, state: AppState, caller: Caller, kind: str, body: dict[str, Any]) -> None:
        self.state, self.kind = state, kind
        self.id = f"{UPSTREAM_PREFIX}{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.user_id = caller.user(body.get("user") if isinstance(body.get("user"), str) else None)
        self.asked_model = str(body.get("model") or "")
        if kind == "chat":
            self.messages = list(body.get("messages") or [])
        else:
            self.messages = [{"prompt": body.get("prompt")}]
        self.started = time.perf_counter()

    def write(self, answer: dict[str, Any]) -> None:
        """Commit the interaction (blocking: call it in a thread), with its example if kept."""
        settings = self.state.settings.proxy
        text = answer["text"]
        record_interaction(
            self.state.db,
            id=self.id,
            user_id=self.user_id,
            kind=self.kind,
            model=(answer["model"] or self.asked_model)[:128],
            version_id=None,
            messages=self.messages,
            response=text,
            finish_reason=str(answer["finish"] or "stop")[:16],
            prompt_tokens=int(answer["prompt_tokens"] or 0),
            completion_tokens=int(answer["completion_tokens"] or 0),
            latency_ms=round((time.perf_counter() - self.started) * 1000, 2),
            chat_template=None,
            example=upstream_example(
                self.kind, self.messages, text, settings.keep, settings.sample_share
            ),
        )


async def _forward(
    upstream: Upstream,
    request: Request,
    state: AppState,
    caller: Caller,
    kind: str,
    raw: bytes,
    body: dict[str, Any],
) -> Response:
    record = _Record(state, caller, kind, body)
    client = upstream.client()
    headers = upstream.headers(request, caller)
    sent = client.build_request("POST", _PATHS[kind], content=raw, headers=headers)
    response = await client.send(sent, stream=True)
    headers = {"X-Selftune-Interaction": record.id, "X-Selftune-Version": "upstream"}
    media_type = response.headers.get("content-type", "application/json")
    if response.status_code != 200 or not media_type.startswith("text/event-stream"):
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        if response.status_code == 200:
            await run_in_threadpool(record.write, _answer_of_json(content, kind))
        else:
            headers.pop("X-Selftune-Interaction")  # nothing was recorded
        return Response(content, response.status_code, headers, media_type)
    return StreamingResponse(_relay(response, record), response.status_code, headers, media_type)


async def _relay(response: httpx.Response, record: _Record) -> AsyncIterator[bytes]:
    """The upstream's events as they come; the piece with ``[DONE]`` only once the answer is
    recorded (an error event instead if that failed), as the local routes do."""
    seen = bytearray()
    held = b""
    try:
        async for piece in response.aiter_bytes():
            seen += piece
            if _DONE in piece:
                held += piece
            else:
                yield piece
    finally:
        await response.aclose()
    try:
        await run_in_threadpool(record.write, _answer_of_events(bytes(seen), record.kind))
    except Exception as exc:
        log.exception("could not record an upstream answer")
        body = error_body(f"the answer could not be recorded: {exc}", "server_error")
        yield f"data: {json.dumps(body)}\n\n".encode()
        return
    if held:
        yield held


def _empty_answer() -> dict[str, Any]:
    return {"text": "", "finish": None, "model": "", "prompt_tokens": 0, "completion_tokens": 0}


def _take(answer: dict[str, Any], payload: Any, kind: str, streamed: bool) -> None:
    """Add one response object's (or event's) text, finish, model and usage to ``answer``."""
    if not isinstance(payload, dict):
        return
    answer["model"] = payload.get("model") or answer["model"]
    usage = payload.get("usage")
    if isinstance(usage, dict):
        answer["prompt_tokens"] = usage.get("prompt_tokens") or answer["prompt_tokens"]
        answer["completion_tokens"] = usage.get("completion_tokens") or answer["completion_tokens"]
    choices = payload.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    if kind == "chat":
        part = choice.get("delta" if streamed else "message") or {}
        text = part.get("content") if isinstance(part, dict) else None
    else:
        text = choice.get("text")
    if isinstance(text, str):
        answer["text"] += text
    answer["finish"] = choice.get("finish_reason") or answer["finish"]


def _answer_of_json(content: bytes, kind: str) -> dict[str, Any]:
    answer = _empty_answer()
    try:
        _take(answer, json.loads(content), kind, streamed=False)
    except ValueError:
        log.warning("the upstream's answer is not JSON; recorded as empty")
    return answer


def _answer_of_events(content: bytes, kind: str) -> dict[str, Any]:
    answer = _empty_answer()
    for line in content.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data and data != "[DONE]":
            try:
                _take(answer, json.loads(data), kind, streamed=True)
            except ValueError:
                continue
    return answer
