"""Choosing the next token and cutting the text at stop sequences; shared by engines."""

from __future__ import annotations

import torch

from selftune.engines.base import GenerationParams

__all__ = ["StopMatcher", "next_token"]


def next_token(
    logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top_p) sampling. logits: (vocab,)."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class StopMatcher:
    """Feeds the growing decoded text; returns what is safe to emit and whether to stop.

    Text that could be the start of a stop sequence is held back until it is clear, and a
    trailing U+FFFD (half of a multi-byte character) is never emitted early.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._emitted = 0
        self._text = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self._text = text
        hits = [i for i in (text.find(stop) for stop in self.stops) if i != -1]
        if hits:
            self._text = text[: min(hits)]  # the earliest stop wins, whichever it is
            piece = self._text[self._emitted :]
            self._emitted = len(self._text)
            return piece, True
        safe = len(text) - self._hold
        while safe > self._emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        if safe <= self._emitted:
            return "", False
        piece = text[self._emitted : safe]
        self._emitted = safe
        return piece, False

    def flush(self) -> str:
        piece = self._text[self._emitted :]
        self._emitted = len(self._text)
        return piece
