"""Importing documents: files turned into documents and chunks, with their provenance.

- :func:`detect_format` reads what a file is from its bytes (PDF, HTML, Markdown, text) and
  refuses binary content (``formats``);
- :func:`parse_bytes` turns it into a :class:`Document` with pypdf, trafilatura or as text
  (``parsers``);
- :func:`chunk_document` splits a document into :class:`Chunk` s along headings, paragraphs and
  sentences (``chunks``);
- :class:`Provenance` records source, user, time, hash and importer (``provenance``);
- :func:`~selftune.imports.markdown.headings` reads Markdown's headings, for titles and chunks'
  heading paths (``markdown``);
- :func:`parse_document` does all of it for one file.

Anything that cannot be imported whole raises :class:`ImportRefused` with a machine-readable
``code`` and a message that says what to do; nothing partial is returned. The import jobs, the
API and the CLI that use this are ``selftune.data.documents`` and its callers (docs/imports.md).

A leaf library: it imports nothing of selftune outside itself (pyproject's import-linter contract),
so that the API, the worker and the CLI can all use it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from selftune.imports.chunks import Chunk, ChunkSettings, chunk_document
from selftune.imports.formats import (
    Detected,
    Format,
    ImportRefused,
    RefusalCode,
    decode_text,
    detect_format,
)
from selftune.imports.parsers import DEFAULT_LIMITS, Document, ImportLimits, Parsed, parse_bytes
from selftune.imports.provenance import Provenance

__all__ = [
    "DEFAULT_LIMITS",
    "Chunk",
    "ChunkSettings",
    "Detected",
    "Document",
    "Format",
    "ImportLimits",
    "ImportRefused",
    "Parsed",
    "ParsedImport",
    "Provenance",
    "RefusalCode",
    "chunk_document",
    "decode_text",
    "detect_format",
    "parse_bytes",
    "parse_document",
]


@dataclasses.dataclass(frozen=True)
class ParsedImport:
    """One imported file: the document, its chunks and where it came from."""

    document: Document
    chunks: list[Chunk]
    provenance: Provenance


def parse_document(
    data: bytes,
    name: str | None = None,
    *,
    limits: ImportLimits = DEFAULT_LIMITS,
    chunking: ChunkSettings | None = None,
    user: str | None = None,
    source: str | None = None,
    at: datetime | None = None,
) -> ParsedImport:
    """``data`` (a file named ``name``, which only hints at its format) parsed, chunked and
    recorded: ``source`` defaults to ``name``, ``at`` to now. Raises :class:`ImportRefused` when
    the file cannot be imported whole."""
    parsed = parse_bytes(data, name, limits)
    provenance = Provenance.record(
        data,
        source=source or name,
        user=user,
        importer=parsed.importer,
        importer_version=parsed.importer_version,
        at=at,
    )
    return ParsedImport(parsed.document, chunk_document(parsed.document, chunking), provenance)
