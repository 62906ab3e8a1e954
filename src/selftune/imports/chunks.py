"""A document split into chunks, for memory (retrieval) and for training examples.

Chunks follow the document's structure: a heading always starts a new chunk (so that each chunk
sits under one heading path), paragraphs are packed together up to the target size, a paragraph
too long for one chunk is split between sentences, and a sentence too long for one between words.
A chunk never ends or starts inside a word; a single word longer than the target (a long URL) is
a chunk of its own, longer than the target.

Each chunk after the first of a section repeats the last ``overlap_chars`` or so of the one
before it (from a word start), so that a sentence cut at a chunk's end is whole in the next.
Each chunk's text is exactly ``document.text[start:end]``. The same document and settings always
give the same chunks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from selftune.imports.markdown import headings
from selftune.imports.parsers import Document

__all__ = ["Chunk", "ChunkSettings", "chunk_document"]


@dataclasses.dataclass(frozen=True)
class ChunkSettings:
    """How large chunks are. Sizes are in characters: about four characters make a token in
    English, so the defaults are some 250-300 tokens a chunk with 30 of overlap."""

    target_chars: int = 1200  # the most characters in a chunk (unless one word is longer)
    overlap_chars: int = 120  # about how many characters a chunk repeats from the one before

    def __post_init__(self) -> None:
        if self.target_chars < 50:
            raise ValueError(f"target_chars must be at least 50, not {self.target_chars}")
        if not 0 <= self.overlap_chars <= self.target_chars // 2:
            raise ValueError(
                f"overlap_chars must be between 0 and half of target_chars "
                f"({self.target_chars // 2}), not {self.overlap_chars}"
            )


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of a document: ``text == document.text[start:end]``, under the headings in
    ``headings`` (outermost first; empty for text and PDF documents, and before the first
    heading)."""

    index: int
    text: str
    start: int
    end: int
    headings: tuple[str, ...] = ()


# Every pattern here is linear in the text: no lazy repeat is followed by a lookahead that scans.
_BLANK_LINES = re.compile(r"\n[ \t]*\n")  # between paragraphs
# A sentence ends at . ! ? or an ellipsis, with any closing quotes or brackets, before a space.
_SENTENCE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*(?=\s)")
_WORD = re.compile(r"\S+")


@dataclasses.dataclass(frozen=True)
class _Section:
    start: int
    end: int
    headings: tuple[str, ...]


def _sections(text: str, markdown: bool) -> Iterator[_Section]:
    """The document's sections: each Markdown heading (outside code fences) starts one, which
    runs to the next heading. A text without headings is one section."""
    path: list[tuple[int, str]] = []  # (level, title) from the outermost heading
    start = 0
    for heading in headings(text) if markdown else ():
        if heading.start > start:
            yield _Section(start, heading.start, tuple(title for _, title in path))
        path = [(level, title) for level, title in path if level < heading.level]
        path.append((heading.level, heading.title))
        start = heading.start
    yield _Section(start, len(text), tuple(title for _, title in path))


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` without leading and trailing whitespace; None when nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _split(
    text: str, start: int, end: int, separator: re.Pattern[str]
) -> Iterator[tuple[int, int]]:
    """The non-blank spans of ``text[start:end]`` between matches of ``separator``, trimmed;
    a match's own text ends the span before it (so a sentence keeps its full stop)."""
    for match in separator.finditer(text, start, end):
        span = _trimmed(text, start, match.end())
        if span:
            yield span
        start = match.end()
    span = _trimmed(text, start, end)
    if span:
        yield span


def _units(text: str, start: int, end: int, target: int) -> Iterator[tuple[int, int]]:
    """Spans of ``text[start:end]`` that a chunk may not split: paragraphs that fit in a chunk,
    else their sentences that fit, else those sentences' words."""
    for paragraph in _split(text, start, end, _BLANK_LINES):
        if paragraph[1] - paragraph[0] <= target:
            yield paragraph
            continue
        for sentence in _split(text, *paragraph, _SENTENCE_END):
            if sentence[1] - sentence[0] <= target:
                yield sentence
            else:
                yield from (word.span() for word in _WORD.finditer(text, *sentence))


def _overlap_start(text: str, previous_start: int, previous_end: int, overlap: int) -> int | None:
    """Where the next chunk starts to repeat about ``overlap`` characters of the previous one:
    the first word start at or after ``previous_end - overlap``; None when there is none."""
    if overlap == 0:
        return None
    word = _WORD.search(text, max(previous_end - overlap, previous_start + 1), previous_end)
    while word is not None and word.start() > 0 and not text[word.start() - 1].isspace():
        word = _WORD.search(text, word.end(), previous_end)  # it began inside a word
    return word.start() if word is not None else None


def chunk_document(document: Document, settings: ChunkSettings | None = None) -> list[Chunk]:
    """``document`` split into chunks (see the module's docstring), in document order."""
    settings = settings or ChunkSettings()
    target = settings.target_chars
    text = document.text
    markdown = document.format in ("markdown", "html")  # their text is Markdown
    chunks: list[Chunk] = []

    def emit(start: int, end: int, path: tuple[str, ...]) -> None:
        chunks.append(Chunk(len(chunks), text[start:end], start, end, path))

    for section in _sections(text, markdown):
        chunk_start: int | None = None  # where the chunk being packed starts
        chunk_end = 0
        for unit_start, unit_end in _units(text, section.start, section.end, target):
            if chunk_start is None:
                chunk_start, chunk_end = unit_start, unit_end
                continue
            if unit_end - chunk_start <= target:
                chunk_end = unit_end
                continue
            emit(chunk_start, chunk_end, section.headings)
            overlap = _overlap_start(text, chunk_start, chunk_end, settings.overlap_chars)
            if overlap is not None and unit_end - overlap <= target:
                chunk_start = overlap
            else:
                chunk_start = unit_start
            chunk_end = unit_end
        if chunk_start is not None:
            emit(chunk_start, chunk_end, section.headings)
    return chunks
