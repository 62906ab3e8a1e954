"""ollama's request bodies and response objects, for api/ollama_routes.py and ``/openapi.json``.

The requests accept and ignore fields they do not name, as ollama's server does; what changes
an answer and selftune cannot do is refused by the routes. The response models document the
bodies the routes build themselves, field for field (``extra="forbid"``, as api/responses.py's).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selftune.api.schemas import refuse_unpaired_surrogates

__all__ = [
    "OllamaChatChunk",
    "OllamaChatRequest",
    "OllamaEmbedRequest",
    "OllamaEmbedResponse",
    "OllamaEmbeddingsRequest",
    "OllamaEmbeddingsResponse",
    "OllamaError",
    "OllamaGenerateChunk",
    "OllamaGenerateRequest",
    "OllamaMessage",
    "OllamaProcesses",
    "OllamaShow",
    "OllamaShowRequest",
    "OllamaTags",
    "OllamaVersion",
]


# --- requests ------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, value: Any) -> Any:
        return refuse_unpaired_surrogates(value)  # as the other routes' bodies


class OllamaCalledFunction(_Request):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(_Request):
    function: OllamaCalledFunction


class OllamaMessage(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = Field(None, description="not supported: text only")
    tool_calls: list[OllamaToolCall] | None = Field(None, description="assistant: its calls")
    tool_name: str | None = Field(None, description="tool: the function that returned this")
    thinking: str | None = Field(None, description="ignored: selftune serves no thinking model")


class _Generating(_Request):
    model: str = Field(min_length=1, description="a served name, version name or base")
    stream: bool = Field(True, description="false: one object instead of NDJSON lines")
    format: Literal["", "json"] | dict[str, Any] | None = Field(
        None, description='"json": any JSON object; a JSON Schema: that schema'
    )
    options: dict[str, Any] | None = Field(
        None, description="the Modelfile's parameters; see docs/compatibility.md#ollama"
    )
    keep_alive: float | str | None = Field(None, description="ignored: the model stays loaded")
    think: bool | str | None = Field(None, description="false only")
    logprobs: bool | None = Field(None, description="false only")
    top_logprobs: int | None = Field(None, description="not supported")


class OllamaChatRequest(_Generating):
    messages: list[OllamaMessage] = Field(
        default_factory=list, description="none: load the model and answer nothing"
    )
    tools: list[dict[str, Any]] | None = Field(None, description="OpenAI's function tools")


class OllamaGenerateRequest(_Generating):
    prompt: str = Field("", description="empty: load the model and answer nothing")
    system: str | None = Field(None, description="the system message, before the prompt")
    raw: bool = Field(False, description="true: the prompt as it is, without the chat template")
    template: str | None = Field(None, description="not supported (Go templates)")
    suffix: str | None = Field(None, description="not supported")
    context: list[int] | None = Field(None, description="not supported: use /api/chat")
    images: list[str] | None = Field(None, description="not supported: text only")


class OllamaEmbedRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = Field(True, description="inputs are never truncated: a long one is a 400")
    dimensions: int | None = Field(None, description="not supported")
    options: dict[str, Any] | None = Field(None, description="ignored")
    keep_alive: float | str | None = Field(None, description="ignored")


class OllamaEmbeddingsRequest(_Request):
    model: str = Field(min_length=1)
    prompt: str
    options: dict[str, Any] | None = Field(None, description="ignored")
    keep_alive: float | str | None = Field(None, description="ignored")


class OllamaShowRequest(_Request):
    model: str = Field("", description="ollama's field")
    name: str = Field("", description="the older name of the field")
    verbose: bool = False


# --- responses -----------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OllamaError(_Body):
    """ollama's error body, which the ollama routes answer their errors with."""

    error: str = Field(description="what went wrong, and what to do about it")


class _Done(_Body):
    """The fields of a generation's last object (``done: true``); durations in nanoseconds."""

    model: str
    created_at: str
    done: bool
    interaction_id: str | None = Field(
        None, description="selftune: the interaction to rate with POST /api/feedback (last object)"
    )
    done_reason: Literal["stop", "length", "load"] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class _CalledFunction(_Body):
    name: str
    arguments: dict[str, Any]


class _ToolCall(_Body):
    function: _CalledFunction


class _AssistantMessage(_Body):
    role: Literal["assistant"]
    content: str
    tool_calls: list[_ToolCall] | None = None


class OllamaChatChunk(_Done):
    """``/api/chat``'s answer, or one line of it when streamed."""

    message: _AssistantMessage


class OllamaGenerateChunk(_Done):
    """``/api/generate``'s answer, or one line of it when streamed."""

    response: str


class OllamaEmbedResponse(_Body):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OllamaEmbeddingsResponse(_Body):
    embedding: list[float]


class _Details(_Body):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class _Tag(_Body):
    name: str
    model: str
    modified_at: str
    size: int = Field(description="bytes of the version's adapter on disk (0: the base alone)")
    digest: str
    details: _Details


class OllamaTags(_Body):
    models: list[_Tag]


class _Process(_Body):
    name: str
    model: str
    size: int
    digest: str
    details: _Details
    expires_at: str
    size_vram: int
    context_length: int


class OllamaProcesses(_Body):
    models: list[_Process]


class OllamaShow(_Body):
    modelfile: str
    parameters: str
    template: str
    details: _Details
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaVersion(_Body):
    version: str = Field(description="the ollama release whose API selftune follows")
