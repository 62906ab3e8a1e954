"""Embeddings: OpenAI's ``POST /v1/embeddings`` and llama.cpp's ``POST /embedding`` (also at
``/embeddings``, as llama-server has it).

``model`` names the embedder. The served model embeds under any name ``model`` accepts on the
generation routes (the served name, a version, ``base``, a runtime adapter): the mean-pooled
last hidden states of that version, through the engine. Dedicated embedding models join with
:func:`register_embedding_model`, under their own names, and are listed by ``GET /v1/models``
after the served model's names. The memory's embedding models are two of them: the default,
``all-MiniLM-L6-v2``, and the one ``memory.embedding_model`` names when that is a folder (under
its name, ``<folder>@<hash>``, or the setting's value). They load on the first request that names
them, in a thread, so a server that never embeds with them pays nothing. Vectors are
L2-normalized unless llama.cpp's ``embd_normalize`` asks otherwise. Embeddings are not recorded
as interactions.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from selftune.api.deps import CurrentCaller, State
from selftune.api.errors import ApiError
from selftune.api.responses import ERRORS, VERSION_HEADER, EmbeddingList, LlamaEmbedding
from selftune.api.schemas import EmbeddingInput, EmbeddingRequest, LlamaEmbeddingRequest
from selftune.api.state import AppState, ready_engine
from selftune.api.targets import model_names, resolve_target
from selftune.engines.base import AdapterRef, Engine
from selftune.memory.embedder import (
    DEFAULT_EMBEDDING_MODEL,
    EmbedderError,
    embedder_name,
    load_embedder,
)
from selftune.memory.served import SERVED

__all__ = [
    "Embedder",
    "embed_for",
    "embedding_model_cards",
    "embedding_model_names",
    "normalize",
    "register_embedding_model",
    "router",
]

router = APIRouter(responses=ERRORS)


@dataclasses.dataclass(frozen=True)
class Embedder:
    """One embedding model, ready for a request. Both callables block: run them in a thread."""

    model: str  # the name reported back
    version: str | None  # the version that embeds (the X-Selftune-Version header), if served
    embed: Callable[[Sequence[str]], list[list[float]]]  # unnormalized vectors
    count_tokens: Callable[[str], int]
    max_tokens: int  # the longest text it takes
    detokenize: Callable[[Sequence[int]], str] | None = None  # for token-id inputs


# Dedicated embedding models, by name: each builds its Embedder from the app state when asked
# (in a thread: it may load its model).
_MODELS: dict[str, Callable[[AppState], Embedder]] = {}


def register_embedding_model(name: str, factory: Callable[[AppState], Embedder]) -> None:
    """Make ``factory``'s model available as ``model=name`` on both embedding routes."""
    if name in _MODELS:
        raise ValueError(f"an embedding model named {name!r} is already registered")
    _MODELS[name] = factory


def _memory_model(state: AppState, spec: str) -> Embedder:
    """The memory's embedding model ``spec`` (selftune.memory.embedder), loaded the first time
    it is asked for (seconds) and kept. Blocking."""
    try:
        model = load_embedder(spec, device=state.settings.memory.embedding_device)
    except EmbedderError as exc:
        raise ApiError(
            500,
            f"the embedding model {spec!r} could not be loaded: {exc} "
            "(memory.embedding_model and memory.embedding_device choose it)",
            type="server_error",
            code="embedding_model_unavailable",
        ) from exc
    return Embedder(
        model=model.name,
        version=None,
        embed=lambda texts: model.embed(texts).tolist(),
        count_tokens=model.count_tokens,
        max_tokens=model.max_tokens,
    )


register_embedding_model(
    DEFAULT_EMBEDDING_MODEL, lambda state: _memory_model(state, DEFAULT_EMBEDDING_MODEL)
)


def _configured_name(state: AppState) -> str | None:
    """The name of the configured memory model when it is not a registered one (a folder);
    None otherwise, or when it cannot be read (asking for it then says why). Blocking: hashes
    the folder once per process."""
    spec = state.settings.memory.embedding_model
    if spec in _MODELS or spec == SERVED:  # the served model answers under its own names
        return None
    try:
        name = embedder_name(spec)
    except EmbedderError:
        return None
    return None if name in _MODELS else name  # the default, by another of its names


def _configured(state: AppState, model: str) -> Embedder | None:
    """The configured memory model if ``model`` names it (by its name or the setting's value).
    Blocking."""
    spec = state.settings.memory.embedding_model
    if spec != SERVED and (model == spec or model == _configured_name(state)):
        return _memory_model(state, spec)
    return None


def embedding_model_names(state: AppState) -> list[str]:
    """The dedicated embedding models' names, the configured memory model's included.
    Blocking."""
    configured = _configured_name(state)
    return sorted(_MODELS) + ([configured] if configured else [])


def embedding_model_cards(state: AppState) -> list[dict[str, Any]]:
    """``GET /v1/models`` entries of the dedicated embedding models. Blocking."""
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": "selftune", "version": name}
        for name in embedding_model_names(state)
    ]


async def _embedder(state: AppState, model: str | None) -> Embedder:
    if model in _MODELS:
        return await run_in_threadpool(_MODELS[model], state)
    if model is not None and state.settings.memory.embedding_model not in _MODELS:
        configured = await run_in_threadpool(_configured, state, model)
        if configured is not None:
            return configured
    engine = ready_engine(state)
    try:
        target = await run_in_threadpool(resolve_target, state, engine.name, model, None)
    except ApiError as exc:
        if exc.code != "model_not_found":
            raise
        names = await run_in_threadpool(embedding_model_names, state)
        names += await run_in_threadpool(model_names, state)
        raise ApiError(
            404,
            f"no embedding model {model!r}; available: {', '.join(names)}",
            code="model_not_found",
            param="model",
        ) from exc
    return _served(engine, target.model, target.name, target.adapter)


def _served(engine: Engine, model: str, version: str, adapter: AdapterRef | None) -> Embedder:
    return Embedder(
        model=model,
        version=version,
        embed=lambda texts: engine.embed(texts, adapter),
        count_tokens=engine.count_tokens,
        max_tokens=engine.context_length,
        detokenize=engine.detokenize,
    )


def normalize(vector: Sequence[float], kind: int = 2) -> list[float]:
    """llama.cpp's ``embd_normalize``: -1 none, 0 max-abs (int16 range), 1 taxicab, 2 L2, p>2."""
    if kind < 0:
        return list(vector)
    if kind == 0:
        norm = max((abs(x) for x in vector), default=0.0) / 32760.0
    else:
        norm = sum(abs(x) ** kind for x in vector) ** (1.0 / kind)
    return [x / norm for x in vector] if norm > 0 else [0.0 for _ in vector]


def _texts(embedder: Embedder, inputs: Sequence[EmbeddingInput]) -> list[str]:
    if all(isinstance(item, str) for item in inputs):
        return [str(item) for item in inputs]
    if embedder.detokenize is None:
        raise ApiError(
            400, f"{embedder.model} takes text only; send strings in 'input'", param="input"
        )
    decode = embedder.detokenize
    return [item if isinstance(item, str) else decode(item) for item in inputs]


def _embed(
    embedder: Embedder, inputs: Sequence[EmbeddingInput], kind: int
) -> tuple[list[list[float]], int]:
    """Normalized vectors and the prompt tokens they took; a 400 for a text that is too long."""
    texts = _texts(embedder, inputs)
    counts = [embedder.count_tokens(text) for text in texts]
    for index, count in enumerate(counts):
        if count > embedder.max_tokens:
            raise ApiError(
                400,
                f"input {index} is too large: {count} tokens, and {embedder.model} takes at "
                f"most {embedder.max_tokens}. Split it into shorter texts.",
                param="input",
            )
    vectors = [normalize(v, kind) for v in embedder.embed(texts)]
    return vectors, sum(counts)


async def embed_for(
    state: AppState, model: str | None, texts: Sequence[str]
) -> tuple[Embedder, list[list[float]], int]:
    """L2-normalized vectors of ``texts`` by ``model``'s embedder, as the routes here resolve
    it (for ollama's routes), and the prompt tokens they took."""
    embedder = await _embedder(state, model)
    vectors, tokens = await run_in_threadpool(_embed, embedder, texts, 2)
    return embedder, vectors, tokens


def _headers(embedder: Embedder) -> dict[str, str]:
    return {"X-Selftune-Version": embedder.version} if embedder.version else {}


def _base64(vector: Sequence[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# The served model's embeddings say which version made them; a dedicated embedder's do not.
_EMBEDDED: dict[int | str, dict[str, Any]] = {
    200: {"description": "The vectors", "headers": VERSION_HEADER}
}


@router.post("/v1/embeddings", response_model=EmbeddingList, responses=_EMBEDDED)
async def embeddings(body: EmbeddingRequest, state: State, _caller: CurrentCaller) -> JSONResponse:
    embedder = await _embedder(state, body.model)
    vectors, tokens = await run_in_threadpool(_embed, embedder, body.input, 2)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _base64(v) if body.encoding_format == "base64" else v,
        }
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    response = {"object": "list", "data": data, "model": embedder.model, "usage": usage}
    return JSONResponse(response, headers=_headers(embedder))


# llama-server's /embeddings is this route too, not OpenAI's (that is /v1/embeddings).
@router.post("/embedding", response_model=list[LlamaEmbedding], responses=_EMBEDDED)
@router.post("/embeddings", response_model=list[LlamaEmbedding], responses=_EMBEDDED)
async def llamacpp_embedding(
    body: LlamaEmbeddingRequest, state: State, _caller: CurrentCaller
) -> JSONResponse:
    try:
        inputs = body.texts()
    except ValueError as exc:
        raise ApiError(400, str(exc), param="content") from exc
    embedder = await _embedder(state, body.model)
    vectors, _ = await run_in_threadpool(_embed, embedder, inputs, body.embd_normalize)
    # llama.cpp's shape for pooled embeddings: one row per input, nested once.
    response = [{"index": i, "embedding": [v]} for i, v in enumerate(vectors)]
    return JSONResponse(response, headers=_headers(embedder))
