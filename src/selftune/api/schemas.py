"""Request bodies. Unknown OpenAI fields are accepted and ignored, as clients send many."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "FeedbackRequest",
    "PromoteRequest",
    "RollbackRequest",
    "TrainRequest",
]


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
