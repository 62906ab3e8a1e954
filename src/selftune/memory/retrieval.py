"""Retrieval at chat time: memory passages added to a chat's prompt with their sources.

The passages go in a system message before the conversation (merged into the chat's own
system message when it has one), numbered so that an answer can cite them, and only as many as
fit the token budget: a passage that does not fit whole is left out, never cut mid-sentence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from selftune.memory.records import question_of
from selftune.memory.service import Hit

__all__ = ["Passage", "fit_passages", "passages_of", "question_of", "with_passages"]

_PREAMBLE = (
    "Notes from memory follow. Use them when they answer the question, and cite a note by its "
    "number in brackets, like [1]. Ignore notes that do not help."
)


@dataclasses.dataclass(frozen=True)
class Passage:
    record_id: int
    kind: str
    source: str | None
    title: str | None
    text: str
    score: float

    def cited(self, number: int) -> str:
        origin = " - ".join(part for part in (self.title, self.source) if part)
        return f"[{number}] ({origin})\n{self.text}" if origin else f"[{number}]\n{self.text}"

    def view(self) -> dict[str, Any]:
        """What the response and the recorded interaction keep of it."""
        return {
            "id": self.record_id,
            "kind": self.kind,
            "source": self.source,
            "title": self.title,
            "text": self.text,
            "score": round(self.score, 6),
        }


def passages_of(hits: Sequence[Hit]) -> list[Passage]:
    return [
        Passage(
            record_id=int(hit.record["id"]),
            kind=str(hit.record["kind"]),
            source=hit.record["source"],
            title=hit.record["title"],
            text=str(hit.record["text"]),
            score=hit.ranked.score,
        )
        for hit in hits
    ]


def fit_passages(
    passages: Sequence[Passage], count_tokens: Callable[[str], int], budget: int
) -> list[Passage]:
    """The passages, best first, that fit ``budget`` tokens together with the preamble."""
    used = count_tokens(_PREAMBLE)
    kept: list[Passage] = []
    for passage in passages:
        cost = count_tokens(passage.cited(len(kept) + 1)) + 2
        if used + cost <= budget:
            kept.append(passage)
            used += cost
    return kept


def with_passages(
    messages: Sequence[dict[str, Any]], passages: Sequence[Passage]
) -> list[dict[str, Any]]:
    """``messages`` with the passages in the system message."""
    if not passages:
        return list(messages)
    notes = "\n\n".join(p.cited(n) for n, p in enumerate(passages, 1))
    block = f"{_PREAMBLE}\n\n{notes}"
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = f"{out[0]['content']}\n\n{block}"
    else:
        out.insert(0, {"role": "system", "content": block})
    return out
