"""Cutting generated text at stop sequences; shared by every engine (and free of torch)."""

from __future__ import annotations

__all__ = ["StopMatcher"]


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
