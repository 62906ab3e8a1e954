"""What the routes answer, as models for ``/openapi.json``, and the responses that are not JSON.

The models mirror the bodies field for field and in the same order. Routes whose shape clients of
OpenAI, llama.cpp or vLLM depend on build their JSON themselves and return it as a response, so
a model there documents the body without touching its bytes; the management routes and the
smaller llama.cpp ones return plain data that FastAPI checks against the model on the way out.
``extra="forbid"``: a field added to a body and not to its model fails loudly in the tests.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from selftune.api.metrics import CONTENT_TYPE
from selftune.api.schemas import LoraScale
from selftune.export.gguf_model import OutputType

__all__ = [
    "ERRORS",
    "VERSION_HEADER",
    "AppliedTemplate",
    "ChatCompletion",
    "Detokenized",
    "EmbeddingList",
    "ErrorBody",
    "ExportQueued",
    "ExportSummary",
    "FeedbackRecorded",
    "Health",
    "HealthNotReady",
    "JobList",
    "JobQueued",
    "JobView",
    "LlamaCompletion",
    "LlamaEmbedding",
    "LoraAdapter",
    "ModelCard",
    "ModelList",
    "PrometheusResponse",
    "Props",
    "Serving",
    "Slot",
    "Success",
    "TextCompletion",
    "Tokens",
    "VersionList",
    "event_stream",
    "plain_text",
]

FinishReason = Literal["stop", "length", "tool_calls"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors --------------------------------------------------------------------------------
class ErrorDetail(_Body):
    message: str = Field(description="what went wrong, and what to do about it")
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error or server_error"
    )
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="a stable name for the error, such as invalid_api_key")


class ErrorBody(_Body):
    """OpenAI's error body, which every route answers its errors with."""

    error: ErrorDetail


# Every route's errors, for its router's ``responses``. A request that does not validate is a
# 400 with this body, not FastAPI's 422: declaring 4XX keeps the 422 out of the schema too.
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": ErrorBody,
        "description": "Refused: an invalid request (400), no or a bad API key (401), an admin "
        "key needed (403), nothing with that name (404), or a conflict with the current "
        "state (409).",
    },
    "5XX": {
        "model": ErrorBody,
        "description": "Failed: the model failed to load or an internal error (500), or the "
        "model is still loading (503: retry in a few seconds).",
    },
}

_SCHEMAS = "#/components/schemas/"

VERSION_HEADER = {
    "X-Selftune-Version": {
        "description": "the version that answered: a version name, base, or a runtime adapter",
        "schema": {"type": "string"},
    }
}


# One server-sent event, as OpenAPI 3.2 writes the generic text/event-stream item (3.0 and 3.1
# readers such as schemathesis take a stream's schema as one event's): ``data`` holds a JSON
# chunk, or ``[DONE]`` at the end.
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


def event_stream(description: str, example: str) -> dict[int | str, dict[str, Any]]:
    """A route's 200 as server-sent events, next to the JSON its ``response_model`` documents."""
    return {
        200: {
            "description": description,
            "headers": VERSION_HEADER,
            "content": {"text/event-stream": {"schema": _SSE_EVENT, "example": example}},
        }
    }


def plain_text(
    description: str, example: str, media_type: str = "text/plain"
) -> dict[int | str, dict[str, Any]]:
    """A route's 200 as text (its ``response_class`` a PlainTextResponse), and its errors.

    FastAPI files a route's error models under the route's media type; the errors are JSON, so
    here they refer to ErrorBody, which the JSON routes' :data:`ERRORS` put in the schema.
    """
    errors = {
        code: {
            "description": response["description"],
            "content": {"application/json": {"schema": {"$ref": _SCHEMAS + "ErrorBody"}}},
        }
        for code, response in ERRORS.items()
    }
    return {
        200: {
            "description": description,
            "content": {media_type: {"schema": {"type": "string"}, "example": example}},
        },
        **errors,
    }


class PrometheusResponse(PlainTextResponse):
    """Prometheus' text exposition format, as ``GET /metrics`` answers it."""

    media_type = CONTENT_TYPE


# --- OpenAI --------------------------------------------------------------------------------
class Usage(_Body):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CalledFunction(_Body):
    name: str
    arguments: str = Field(description="the arguments, as a JSON text")


class ToolCall(_Body):
    id: str = Field(description="call_..., for the tool message that answers it")
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(_Body):
    role: Literal["assistant"]
    content: str | None = Field(description="null when the answer is a tool call")
    # Present when the answer calls a tool (finish_reason "tool_calls"), else left out.
    tool_calls: list[ToolCall] | SkipJsonSchema[None] = None


class TopLogprob(_Body):
    token: str = Field(description="its text (U+FFFD where it holds part of a character)")
    logprob: float = Field(description="-9999.0 for a banned token")
    bytes: list[int] = Field(description="its exact UTF-8 bytes")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the likeliest tokens, top_logprobs many")


class ChatLogprobs(_Body):
    content: list[TokenLogprob] = Field(description="each generated token, in order")
    refusal: None


class ChatChoice(_Body):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = Field(description="with logprobs: true")


class TextLogprobs(_Body):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] = Field(description="the likeliest, logprobs many")
    text_offset: list[int] = Field(description="where each token starts in text (characters)")


class TextChoice(_Body):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: TextLogprobs | None = Field(description="with logprobs: n")


class _Completion(_Body):
    id: str = Field(description="the interaction's id, to rate it with POST /api/feedback")
    created: int
    model: str = Field(description="the model name the request asked for")
    system_fingerprint: str = Field(description="the version that answered")


class MemoryPassage(_Body):
    """A memory passage the prompt was given (selftune extension)."""

    id: int = Field(description="the memory record's id")
    kind: str
    source: str | None = Field(description="where it came from: a URL, a file, a note, a chat")
    title: str | None
    text: str
    score: float


class ChatCompletion(_Completion):
    """OpenAI's ``chat.completion`` object."""

    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage
    memory: list[MemoryPassage] | None = Field(
        None, description="selftune extension: the memory passages given with the prompt"
    )


class TextCompletion(_Completion):
    """OpenAI's ``text_completion`` object."""

    object: Literal["text_completion"]
    choices: list[TextChoice]
    usage: Usage


class ModelCard(_Body):
    id: str = Field(description="a name the generation and embedding routes accept as model")
    object: Literal["model"]
    created: int
    owned_by: str
    version: str = Field(description="what answers under this name")
    # Present on some cards only, never null: the route leaves out what is not set.
    root: str | SkipJsonSchema[None] = Field(
        None, description="runtime adapters only: the folder of the server's copy"
    )
    parent: str | SkipJsonSchema[None] = Field(
        None, description="versions and runtime adapters only: base"
    )
    gated: bool | SkipJsonSchema[None] = Field(
        None, description="versions only: whether it passed its gate"
    )


class ModelList(_Body):
    object: Literal["list"]
    data: list[ModelCard]


class Embedding(_Body):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="the vector, or with encoding_format=base64 its little-endian float32 bytes"
    )


class EmbeddingUsage(_Body):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Body):
    """OpenAI's embeddings response."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --- llama.cpp -----------------------------------------------------------------------------
class LogitBiasEntry(_Body):
    bias: float | None = Field(description="null: the token is banned")
    token: int


class GenerationSettings(_Body):
    n_ctx: int
    n_predict: int
    model: str
    seed: int
    temperature: float
    top_p: float
    stop: list[str]
    stream: bool
    lora: list[LoraScale]
    top_k: int
    min_p: float
    repeat_last_n: int
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    n_probs: int
    ignore_eos: bool
    grammar: str = Field(description="the grammar the answer followed (json_schema's, converted)")
    logit_bias: list[LogitBiasEntry]


class Timings(_Body):
    cache_n: int
    prompt_n: int
    prompt_ms: float
    prompt_per_token_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float
    predicted_per_token_ms: float
    predicted_per_second: float


class TopProbability(_Body):
    id: int
    token: str = Field(description="its text (U+FFFD where it holds part of a character)")
    bytes: list[int] = Field(description="its exact UTF-8 bytes")
    logprob: float = Field(description="-9999.0 for a banned token")


class TokenProbability(TopProbability):
    top_logprobs: list[TopProbability] = Field(description="the likeliest tokens, n_probs many")


class LlamaCompletion(_Body):
    """llama.cpp's ``/completion`` response (and the last event of its stream)."""

    index: int
    id: str = Field(description="selftune: the interaction's id, for POST /api/feedback")
    content: str
    tokens: list[int] = Field(description="with return_tokens: the generated token ids")
    id_slot: int
    stop: bool
    model: str
    system_fingerprint: str = Field(description="selftune: the version that answered")
    tokens_predicted: int
    tokens_evaluated: int
    generation_settings: GenerationSettings
    prompt: str
    has_new_line: bool
    truncated: bool
    stop_type: Literal["word", "eos", "limit"]
    stopping_word: str
    tokens_cached: int
    timings: Timings
    # With n_probs > 0 (on each event of a stream instead, for its tokens).
    completion_probabilities: list[TokenProbability] | SkipJsonSchema[None] = None


class TokenPiece(_Body):
    id: int
    piece: str


class Tokens(_Body):
    tokens: list[int] | list[TokenPiece] = Field(
        description="token ids, or with with_pieces each id with its text"
    )


class Detokenized(_Body):
    content: str


class PropsParams(_Body):
    n_predict: int
    seed: int
    temperature: float
    top_p: float
    stop: list[str]
    max_tokens: int
    stream: bool
    lora: list[LoraScale]


class SlotSettings(_Body):
    id: int
    id_task: int
    n_ctx: int
    speculative: bool
    is_processing: bool
    params: PropsParams
    prompt: str


class Modalities(_Body):
    vision: bool
    audio: bool


class ServingVersion(_Body):
    version: str
    version_id: int | None


class Props(_Body):
    """llama.cpp's ``/props``, with what serves added."""

    default_generation_settings: SlotSettings
    total_slots: int
    model_path: str
    model_alias: str
    chat_template: str
    modalities: Modalities
    build_info: str
    is_sleeping: bool
    engine: str = Field(description="selftune: the engine that serves")
    serving: ServingVersion = Field(description="selftune: what answers the served name")


class Slot(_Body):
    """One of llama.cpp's slots: selftune has one per server, answering a request at a time."""

    id: int
    id_task: int = Field(description="-1: no task; selftune does not number its requests")
    n_ctx: int
    speculative: bool
    is_processing: bool = Field(description="a request is being answered or waits for the engine")


class AppliedTemplate(_Body):
    prompt: str = Field(description="the messages rendered by the chat template")


class LoraAdapter(_Body):
    id: int = Field(description="the version's id")
    path: str
    scale: float = Field(description="1.0 for the version the served name answers with, else 0")
    name: str = Field(description="selftune: the version's name, usable as model")


class Success(_Body):
    success: bool


class LlamaEmbedding(_Body):
    index: int
    embedding: list[list[float]] = Field(description="the pooled vector, nested once")


# --- management ----------------------------------------------------------------------------
class FeedbackRecorded(_Body):
    feedback_id: int
    interaction_id: str
    example_id: int | None = Field(description="the training example it made, if it made one")


class JobQueued(_Body):
    job_id: int
    status: Literal["queued"]


class JobView(_Body):
    job_id: int
    kind: str
    user: str = Field(description="who queued it")
    status: str
    stage: str
    progress: float
    attempts: int
    cancel_requested: bool
    params: dict[str, Any] = Field(
        description="what the job was asked to do: a training job's reason, and for the "
        "autopilot's jobs the trigger, the troubleshooter's recipe changes (overrides) and the "
        "jobs it retries (chain)"
    )
    result: dict[str, Any] | None
    error: str | None
    created_at: str = Field(description="ISO 8601")
    started_at: str | None
    finished_at: str | None
    outcome: str | None = Field(
        description="a finished training job's: 'served', 'learned, not served: <the gate's "
        "reason>' (its gate refused the candidate), or 'not served: <why>' (it passed, but what "
        "was served changed meanwhile); null for other jobs and unfinished ones"
    )
    next_step: str | None = Field(description="what to do about the outcome, in a sentence")


class JobList(_Body):
    data: list[JobView]


class VersionSummary(_Body):
    id: int
    name: str
    base_model: str
    parent: str
    parent_id: int | None
    job_id: int | None
    created_at: str = Field(description="ISO 8601")
    serving: bool
    trained_on: list[int] = Field(description="the ids of the examples it trained on")
    replayed: list[int] = Field(
        description="those of them its lineage had learned before (the training queue's replay)"
    )
    held_out: list[int] = Field(description="the ids of the examples its gate judged it on")
    train_metrics: dict[str, Any]
    eval: dict[str, Any]
    gate: dict[str, Any]


class VersionList(_Body):
    serving: str
    total: int = Field(description="how many versions there are in all")
    next: int | None = Field(
        description="a paged list's: pass it as ?before= for the next (older) page; null: no more"
    )
    data: list[VersionSummary]


class Serving(_Body):
    """What the served name answers with, after a change."""

    serving: str
    version_id: int | None


class ExportQueued(_Body):
    job_id: int = Field(description="follow it with GET /api/jobs/{job_id}")
    status: Literal["queued"]
    version: str
    format: OutputType


class ExportCheck(_Body):
    format: str
    sha256: str
    heldout_recall: float | None
    version_recall: float | None
    tolerance: float
    examples: int
    judged_on: Literal["heldout", "train"]
    kept: bool
    seconds: float


class ExportDownloads(_Body):
    model: str
    modelfile: str


class ExportSummary(_Body):
    """A checked merged export: where it is, its checksum, its check, where to download it."""

    format: str
    path: str
    size_bytes: int
    sha256: str
    check: ExportCheck
    download: ExportDownloads


# --- the server ----------------------------------------------------------------------------
class WorkerPresence(_Body):
    id: str
    state: str


class Health(_Body):
    status: Literal["ok"]
    serving: str
    workers: list[WorkerPresence] = Field(description="the training workers alive")


class HealthNotReady(_Body):
    status: Literal["loading", "error"]
    error: str | None
