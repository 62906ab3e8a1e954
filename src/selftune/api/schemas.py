"""Request bodies. Unknown OpenAI fields are accepted and ignored, as clients send many."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "DetokenizeRequest",
    "EmbeddingRequest",
    "FeedbackRequest",
    "LlamaCompletionRequest",
    "LlamaEmbeddingRequest",
    "LoadLoraRequest",
    "LoraScale",
    "PromoteRequest",
    "RollbackRequest",
    "TokenizeRequest",
    "TrainRequest",
    "UnloadLoraRequest",
]

TokenId = Annotated[int, Field(ge=0)]


class LoraScale(BaseModel):
    """llama.cpp's ``lora`` entry: a version id (see ``GET /lora-adapters``) and its scale.

    Other fields are ignored: clients POST back the objects ``GET /lora-adapters`` gave them.
    """

    model_config = ConfigDict(extra="ignore")
    id: int
    scale: float


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    user: str | None = Field(None, max_length=128)
    lora: list[LoraScale] | None = Field(
        None, description="llama.cpp extension: [{id, scale}] picks the version for this request"
    )

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template: str | None = Field(
        None, description="selftune extension: a preset name or Jinja template for this request"
    )

    @field_validator("messages")
    @classmethod
    def _last_is_not_empty(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for message in messages:
            message.text()  # rejects non-text parts early
        return messages


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("send exactly one prompt")
        return self.prompt[0]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interaction_id: str = Field(min_length=1)
    rating: Literal[1, -1]
    correction: str | None = Field(None, min_length=1)
    comment: str | None = None
    user: str | None = Field(None, max_length=128)


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = "requested through the API"


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = "promoted through the API"


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version_id: int | None = None
    reason: str = "rolled back through the API"


class LlamaCompletionRequest(BaseModel):
    """llama.cpp's ``POST /completion``; sampling options selftune does not have are ignored."""

    model_config = ConfigDict(extra="ignore")
    prompt: str | list[TokenId]
    n_predict: int | None = Field(None, ge=-1, description="-1: until the context is full")
    temperature: float | None = None  # below 0 is greedy, as in llama.cpp
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] = Field(default_factory=list)
    seed: int = -1  # -1: a random seed
    stream: bool = False
    lora: list[LoraScale] | None = None
    model: str | None = None  # selftune: the served name, a version name, or "base"
    user: str | None = Field(None, max_length=128)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not all(type(v) is int for v in value):
            raise ValueError(
                "send one prompt: a string, or a list of token ids (several prompts, or strings "
                "mixed with token ids, are not supported)"
            )
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[TokenId]


EmbeddingInput = str | list[TokenId]


def _embedding_inputs(value: Any) -> list[EmbeddingInput]:
    """One text, a list of texts, token ids, or a list of token-id lists: as a list of inputs."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, list) and all(type(t) is int for t in v) for v in value):
            return value
    raise ValueError(
        "send a non-empty string, a list of strings, a list of token ids, or a list of "
        "token-id lists"
    )


class EmbeddingRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="ignore")
    input: list[EmbeddingInput]
    model: str | None = None  # None: the served model
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = Field(None, max_length=128)

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[EmbeddingInput]:
        return _embedding_inputs(value)


class LlamaEmbeddingRequest(BaseModel):
    """llama.cpp's ``POST /embedding``: ``content`` (or ``input``) and a normalization."""

    model_config = ConfigDict(extra="ignore")
    content: list[EmbeddingInput] | None = None
    input: list[EmbeddingInput] | None = None
    model: str | None = None
    embd_normalize: int = Field(2, ge=-1, description="-1 none, 0 max-abs, 1 taxicab, 2 L2, >2 p")

    @field_validator("content", "input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[EmbeddingInput] | None:
        return None if value is None else _embedding_inputs(value)

    def texts(self) -> list[EmbeddingInput]:
        inputs = self.content if self.content is not None else self.input
        if inputs is None:
            raise ValueError("send the text to embed in 'content'")
        return inputs


class LoadLoraRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter``."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
