"""What curation works on: one chat to learn from, with who gave it and where it came from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["Example", "chat_text"]


@dataclasses.dataclass(frozen=True)
class Example:
    """A chat ending with the assistant turn to learn, and its provenance.

    ``contributor`` (a user id) and ``source`` ("correction", "rating", "upstream", "import",
    "submitted", ...) are what the contributor caps count; ``created`` orders a run newest first;
    ``language`` is an ISO 639-1 code where the caller knows it (curation detects none)."""

    messages: tuple[Mapping[str, str], ...]
    contributor: str
    source: str
    created: float = 0.0
    language: str | None = None
    id: str | None = None

    @property
    def answer(self) -> str:
        """The assistant turn to learn: the last message's content when it is the assistant's."""
        if self.messages and self.messages[-1].get("role") == "assistant":
            return self.messages[-1].get("content", "")
        return ""

    def with_contents(self, contents: list[str]) -> Example:
        """A copy with each message's content replaced, in order (roles unchanged)."""
        messages = tuple(
            {**message, "content": content}
            for message, content in zip(self.messages, contents, strict=True)
        )
        return dataclasses.replace(self, messages=messages)


def chat_text(example: Example) -> str:
    """The user and assistant turns as one text, for the quality filters and deduplication.

    System prompts are left out: many chats share one long system prompt, which would make
    unrelated chats look alike and bury the part that differs."""
    return "\n".join(
        message.get("content", "")
        for message in example.messages
        if message.get("role") in ("user", "assistant")
    )
