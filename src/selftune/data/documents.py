"""Imports of documents, in the store: record one and queue its job, run it, show it, delete it.

The server and the CLI only record an import: its row and its ``import`` job are committed in
one transaction, and a file's (or a text's) bytes are written first to
``<data_dir>/imports/<id>.bin``, so the database never holds uploads. The worker runs the job
(:func:`run_import`): it fetches a URL (``selftune.imports.fetch``, private addresses refused
unless ``imports.allow_private_addresses``), parses and chunks (``selftune.imports``), and
writes the document and its chunks in one transaction at the end, so a refused or failed import
leaves nothing partial. See docs/imports.md.

Training examples are made from the chunks (``selftune.imports.examples``, the kinds
``imports.examples`` names), curated against the owner's examples and stored in the same
transaction, each with the chunk it came from; deleting the import deletes them (those a version
trained on stay in its lineage, withdrawn from training).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from selftune.atomic import atomic_file
from selftune.config import Settings
from selftune.curate import CurationPolicy, CurationResult, Curator, DedupSettings, Example
from selftune.data.submissions import kept_examples
from selftune.engines.base import Engine
from selftune.imports import (
    ChunkSettings,
    ImportLimits,
    ImportRefused,
    ParsedImport,
    parse_document,
)
from selftune.imports.chunks import Chunk
from selftune.imports.examples import KINDS, DocumentExample, ExampleKind, examples_from_chunks
from selftune.imports.fetch import FetchPolicy, FetchRefused, Refused, crawl, fetch
from selftune.memory.records import NewRecord, add_records, delete_records
from selftune.memory.served import embedder_loaders
from selftune.memory.tags import import_tags
from selftune.memory.vectors import store_vectors
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.schema import (
    DocumentChunk,
    ImportedDocument,
    ImportRecord,
    Job,
    MemoryRecord,
    TrainingExample,
    VersionExample,
    as_utc,
    utcnow,
)

__all__ = [
    "IMPORT_SUFFIXES",
    "ImportBusy",
    "ImportInvalid",
    "delete_import",
    "files_to_import",
    "find_import",
    "import_view",
    "list_imports",
    "record_import",
    "run_import",
    "upload_path",
]

Kind = Literal["file", "url", "text"]
FINAL = ("succeeded", "failed", "cancelled")
_MAX_TAGS, _MAX_TAG_CHARS = 32, 64


class ImportInvalid(ValueError):
    """An import refused before it is recorded: ``code`` and ``param`` for the API's error."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class ImportBusy(RuntimeError):
    """The import's job is running: it cannot be deleted until it ends."""


def upload_path(settings: Settings, import_id: int) -> Path:
    """Where an import's uploaded bytes are kept."""
    return settings.data_dir / "imports" / f"{import_id}.bin"


def check_tags(tags: list[str]) -> list[str]:
    """``tags`` stripped, without empty or repeated ones; too many or too long are refused."""
    kept = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
    if len(kept) > _MAX_TAGS or any(len(t) > _MAX_TAG_CHARS for t in kept):
        raise ImportInvalid(
            "invalid_tags",
            f"at most {_MAX_TAGS} tags of at most {_MAX_TAG_CHARS} characters each",
            "tags",
        )
    return kept


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; where it points is checked when fetched."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImportInvalid(
            "invalid_url", f"{url!r} is not an http:// or https:// URL with a host", "url"
        )
    return url.strip()


def record_import(
    settings: Settings,
    db: Database,
    user_id: str,
    kind: Kind,
    source: str,
    *,
    data: bytes | None = None,
    title: str | None = None,
    tags: list[str] | None = None,
    shared: bool = False,
    worker_id: str | None = None,
    depth: int = 0,
) -> tuple[int, int]:
    """Record an import of ``kind`` and queue its job; returns (import id, job id). A file's or
    a text's ``data`` is written (atomically) before the row and the job are committed, so the
    worker finds it; if the commit fails, the file goes too. With ``worker_id`` the job is not
    queued but recorded as that worker's, running (the CLI runs it itself)."""
    tags = check_tags(tags or [])
    if depth and kind != "url":
        raise ImportInvalid(
            "invalid_depth", "depth follows a web page's links: give a url", "depth"
        )
    if kind == "url":
        source = check_url(source)
    elif not data:
        raise ImportInvalid("empty_document", "nothing to import: the body is empty")
    elif len(data) > settings.imports.max_bytes:
        raise ImportInvalid(
            "too_large",
            f"the file is {len(data)} bytes; imports take at most {settings.imports.max_bytes} "
            "(imports.max_bytes)",
        )
    path: Path | None = None
    try:
        with db.write() as session:
            record = ImportRecord(
                user_id=user_id,
                kind=kind,
                source=source,
                title=title,
                tags=tags,
                shared=shared,
                state="queued",
                counts={},
            )
            # Also makes the user's row, which the import's refers to.
            job = jobs.add_job(session, "import", user_id, worker_id=worker_id)
            session.add(record)
            session.flush()
            job.params = {"import_id": record.id, **({"depth": depth} if depth else {})}
            record.job_id = job.id
            if data is not None:
                path = upload_path(settings, record.id)
                path.unlink(missing_ok=True)  # left by a transaction that did not commit
                with atomic_file(path) as tmp:
                    tmp.write_bytes(data)
            return record.id, job.id
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise


# What a folder import takes: the formats the parsers read, by their usual names.
IMPORT_SUFFIXES = frozenset(
    {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf"}
    | {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp", ".webp"}  # read by OCR
)


def files_to_import(path: Path) -> list[Path]:
    """``path`` itself, or the files under a folder with a suffix of :data:`IMPORT_SUFFIXES`,
    recursively, in order, skipping hidden files and folders (a name starting with a dot)."""
    if not path.is_dir():
        return [path]
    return sorted(
        found
        for found in path.rglob("*")
        if found.is_file()
        and found.suffix.lower() in IMPORT_SUFFIXES
        and not any(part.startswith(".") for part in found.relative_to(path).parts)
    )


def _name_for(url: str, content_type: str) -> str:
    """A file name for a fetched page, for the parsers' format hint."""
    name = PurePosixPath(urlsplit(url).path).name or "index"
    wanted = {"text/html": ".html", "application/xhtml+xml": ".html", "application/pdf": ".pdf"}
    suffix = wanted.get(content_type.split(";", 1)[0].strip().lower())
    if suffix and not name.lower().endswith((suffix, ".htm")):
        name += suffix
    return name


def _fail(db: Database, import_id: int, code: str, message: str) -> None:
    with db.write() as session:
        record = session.get(ImportRecord, import_id)
        if record is not None:
            record.state, record.error_code, record.error = "failed", code, message
            record.finished_at = utcnow()


def _duplicate_of(session: Session, user_id: str, sha256: str, import_id: int) -> int | None:
    """An earlier import of the same user that stored the same bytes."""
    earlier = session.scalars(
        select(ImportRecord).where(
            ImportRecord.user_id == user_id,
            ImportRecord.state == "succeeded",
            ImportRecord.id != import_id,
        )
    )
    for record in earlier:
        if (record.provenance or {}).get("sha256") == sha256 and record.counts.get("documents"):
            return record.id
    return None


@dataclasses.dataclass(frozen=True)
class _Page:
    """One document of an import, parsed, with where a fetched one came from."""

    parsed: ParsedImport
    extra: dict[str, Any]


def run_import(
    settings: Settings,
    db: Database,
    job_id: int,
    import_id: int,
    report: Callable[[float, str], None],
    *,
    worker_id: str,
    engine: Callable[[], Engine] | None = None,
    depth: int = 0,
) -> dict[str, Any]:
    """Fetch or read, parse, chunk and store one import; the job's result. A URL with
    ``depth`` follows links on its site that far (imports.max_crawl_pages pages at most, robots.txt
    honoured), one document a page; pages refused or unreadable are listed, not fatal. ``engine``
    gives the served model, when memory embeds with it (``memory.embedding_model = "served"``).
    A refusal of the file or the first page (:class:`ImportRefused`, :class:`FetchRefused`)
    marks the import failed with its code and raises :class:`~selftune.store.jobs.JobFailed`;
    nothing of it is stored."""
    with db.write() as session:
        record = session.get(ImportRecord, import_id)
        if record is None:
            raise jobs.JobFailed(f"import {import_id} was deleted before it ran")
        record.state = "running"
        kind, source, user_id, title = record.kind, record.source, record.user_id, record.title
    try:
        pages, skipped = _read_pages(settings, import_id, kind, source, user_id, depth, report)
    except (ImportRefused, FetchRefused) as refused:
        _fail(db, import_id, refused.code, refused.message)
        raise jobs.JobFailed(f"{refused.code}: {refused.message}") from refused
    remembered = [
        _embedded_chunks(
            settings,
            page.parsed.chunks,
            (title if len(pages) == 1 else None) or page.parsed.document.title,
            report,
            engine or _no_engine,
        )
        for page in pages
    ]
    report(0.8, "storing")
    with db.write() as session:
        if not jobs.holds(session, job_id, worker_id):
            raise jobs.JobLost(f"job {job_id} is no longer this worker's")
        record = session.get(ImportRecord, import_id)
        if record is None:
            raise jobs.JobFailed(f"import {import_id} was deleted while it ran")
        first = pages[0].parsed.provenance
        record.provenance = {
            "source": first.source,
            "sha256": first.sha256,
            "size": first.size,
            "importer": first.importer,
            "importer_version": first.importer_version,
            "imported_at": first.imported_at.isoformat(),
            **pages[0].extra,
        }
        if depth:
            record.provenance.update(depth=depth, pages=len(pages), skipped=skipped)
        duplicate = _duplicate_of(session, user_id, first.sha256, import_id) if not depth else None
        counts: dict[str, Any] = {"documents": 0, "chunks": 0, "examples_made": 0}
        if duplicate is not None:
            counts.update(duplicates_dropped=1, duplicate_of=duplicate)
        else:
            counts["duplicates_dropped"] = 0
            seen: set[str] = set()
            for page, embedded in zip(pages, remembered, strict=True):
                if page.parsed.provenance.sha256 in seen:  # two URLs, the same page
                    counts["duplicates_dropped"] += 1
                    continue
                seen.add(page.parsed.provenance.sha256)
                named = title if len(pages) == 1 else None
                _store_document(session, settings, record, page, named, embedded, counts)
        record.counts = counts
        record.state, record.finished_at = "succeeded", utcnow()
    return {"import_id": import_id, **counts}


def _read_pages(
    settings: Settings,
    import_id: int,
    kind: str,
    source: str,
    user_id: str,
    depth: int,
    report: Callable[[float, str], None],
) -> tuple[list[_Page], list[dict[str, str]]]:
    """The import's documents, parsed, and the crawled pages left out ({url, code, message}).
    Raises the refusal of a file, a text or the first page."""
    options = settings.imports
    limits = ImportLimits(
        max_bytes=options.max_bytes,
        max_pdf_pages=options.max_pdf_pages,
        max_image_pixels=options.max_image_pixels,
        ocr_timeout_s=options.ocr_timeout_s,
        ocr_languages=options.ocr_languages,
    )
    chunking = ChunkSettings(
        target_chars=options.chunk_chars, overlap_chars=options.chunk_chars // 10
    )

    def parsed(data: bytes, name: str | None, from_source: str) -> ParsedImport:
        return parse_document(
            data, name, limits=limits, chunking=chunking, user=user_id, source=from_source
        )

    if kind != "url":
        report(0.05, "reading")
        data = upload_path(settings, import_id).read_bytes()
        name = source if kind == "file" else None  # a text's bytes say what it is
        report(0.3, "parsing")
        return [_Page(parsed(data, name, source), {})], []
    report(0.05, "fetching")
    policy = FetchPolicy(
        allow_private=options.allow_private_addresses,
        timeout_s=options.fetch_timeout_s,
        max_bytes=options.max_bytes,
    )
    fetched = (
        crawl(source, policy, max_depth=depth, max_pages=options.max_crawl_pages)
        if depth
        else iter([fetch(source, policy)])
    )
    pages: list[_Page] = []
    skipped: list[dict[str, str]] = []
    for item in fetched:
        try:
            if isinstance(item, Refused):
                raise FetchRefused(item.code, item.message, url=item.url, status=item.status)
            extra: dict[str, Any] = {"url": item.url, "content_type": item.content_type}
            if item.redirects:
                extra["redirects"] = list(item.redirects)
            name = _name_for(item.url, item.content_type)
            pages.append(_Page(parsed(item.body, name, item.url if depth else source), extra))
        except (ImportRefused, FetchRefused) as refused:
            if not pages and not skipped:
                raise  # the page asked for: the import fails with its reason
            skipped.append(
                {"url": getattr(item, "url", ""), "code": refused.code, "message": refused.message}
            )
        report(
            0.05 + 0.25 * min(1.0, (len(pages) + len(skipped)) / options.max_crawl_pages),
            f"fetched {len(pages)} pages" + (f", {len(skipped)} left out" if skipped else ""),
        )
    return pages, skipped


def _store_document(
    session: Session,
    settings: Settings,
    record: ImportRecord,
    page: _Page,
    title: str | None,
    embedded: tuple[str, npt.NDArray[np.float32]] | None,
    counts: dict[str, Any],
) -> None:
    """Store one document of the import: its chunks, its training examples, its memory."""
    document, chunks = page.parsed.document, page.parsed.chunks
    stored = ImportedDocument(
        import_id=record.id,
        title=title or document.title,
        format=document.format,
        text=document.text,
        meta={**document.metadata, **({"url": page.extra["url"]} if "url" in page.extra else {})},
    )
    session.add(stored)
    session.flush()
    session.add_all(
        DocumentChunk(
            document_id=stored.id,
            index=chunk.index,
            start=chunk.start,
            end=chunk.end,
            headings=list(chunk.headings),
            text=chunk.text,
        )
        for chunk in chunks
    )
    counts["documents"] += 1
    counts["chunks"] += len(chunks)
    made = _store_examples(
        session,
        settings,
        record,
        stored,
        examples_from_chunks(chunks, stored.title, _kinds(settings.imports.examples)),
    )
    counts["examples_made"] += made["examples_made"]
    counts["examples_not_kept"] = counts.get("examples_not_kept", 0) + made["examples_not_kept"]
    counts["examples_kinds"] = sorted(
        set(counts.get("examples_kinds", [])) | set(made["examples_kinds"])
    )
    if embedded is not None:
        session.flush()
        counts["memory_records"] = counts.get("memory_records", 0) + _remember_chunks(
            session, settings, record, stored, chunks, embedded
        )


def find_import(db: Database, import_id: int, owner: str | None) -> ImportRecord | None:
    """The import, if it exists and ``owner`` (None: anyone's) made it."""
    with db.read() as session:
        record = session.get(ImportRecord, import_id)
    if record is None or (owner is not None and record.user_id != owner):
        return None
    return record


def _state(record: ImportRecord, job: Job | None) -> tuple[str, float, str, str | None]:
    """(state, progress, stage, error) of an import: its own once final, else its job's (a job
    that failed or was cancelled before the import's row was told)."""
    if record.state in FINAL or job is None:
        progress = 1.0 if record.state == "succeeded" else (job.progress if job else 0.0)
        return record.state, progress, record.state, record.error
    state = job.status if job.status in ("queued", "running", "failed", "cancelled") else "running"
    return state, job.progress, job.stage, record.error or job.error


def import_view(session: Session, record: ImportRecord, *, documents: bool) -> dict[str, Any]:
    """What the API shows of an import; with ``documents``, each document and its chunk count."""
    job = session.get(Job, record.job_id) if record.job_id is not None else None
    state, progress, stage, error = _state(record, job)
    counts = record.counts or {}
    view: dict[str, Any] = {
        "id": record.id,
        "user": record.user_id,
        "kind": record.kind,
        "source": record.source,
        "tags": record.tags or [],
        "shared": record.shared,
        "state": state,
        "progress": round(progress, 4),
        "stage": stage,
        "job_id": record.job_id,
        "error": {"code": record.error_code or "import_failed", "message": error}
        if error
        else None,
        "provenance": record.provenance,
        "documents_made": counts.get("documents", 0),
        "chunks_made": counts.get("chunks", 0),
        "examples_made": counts.get("examples_made", 0),
        "examples_not_kept": counts.get("examples_not_kept", 0),
        "duplicates_dropped": counts.get("duplicates_dropped", 0),
        "duplicate_of": counts.get("duplicate_of"),
        "created_at": as_utc(record.created_at).isoformat(),
        "finished_at": as_utc(record.finished_at).isoformat() if record.finished_at else None,
    }
    if documents:
        chunk_counts = (
            select(DocumentChunk.document_id, func.count().label("n"))
            .group_by(DocumentChunk.document_id)
            .subquery()
        )
        rows = session.execute(
            select(ImportedDocument, chunk_counts.c.n)
            .outerjoin(chunk_counts, chunk_counts.c.document_id == ImportedDocument.id)
            .where(ImportedDocument.import_id == record.id)
            .order_by(ImportedDocument.id)
        )
        view["documents"] = [
            {
                "id": doc.id,
                "title": doc.title,
                "format": doc.format,
                "characters": len(doc.text),
                "metadata": doc.meta,
                "chunks": n or 0,
            }
            for doc, n in rows
        ]
        view["examples_note"] = _examples_note(counts)
    return view


def list_imports(
    db: Database, owner: str | None, *, after: int = 0, limit: int = 100
) -> tuple[list[dict[str, Any]], bool]:
    """Imports by id after ``after``, oldest first: ``owner``'s, or everyone's (None)."""
    with db.read() as session:
        query = select(ImportRecord).where(ImportRecord.id > after)
        if owner is not None:
            query = query.where(ImportRecord.user_id == owner)
        rows = list(session.scalars(query.order_by(ImportRecord.id).limit(limit + 1)))
        data = [import_view(session, r, documents=False) for r in rows[:limit]]
    return data, len(rows) > limit


def delete_import(settings: Settings, db: Database, import_id: int) -> dict[str, Any]:
    """Delete an import, its documents, its chunks and its uploaded bytes. A queued import's
    job is cancelled; a running one raises :class:`ImportBusy`."""
    with db.write() as session:
        record = session.get(ImportRecord, import_id, with_for_update=True)
        if record is None:
            raise LookupError(f"no import {import_id}")
        job = session.get(Job, record.job_id, with_for_update=True) if record.job_id else None
        if job is not None and job.status == "running":
            raise ImportBusy(
                f"import {import_id} is running (job {job.id}): wait for it to end, or cancel "
                f"it with POST /api/jobs/{job.id}/cancel, then delete it"
            )
        if job is not None and job.status == "queued":
            job.status, job.stage, job.finished_at = "cancelled", "cancelled", utcnow()
        document_ids = list(
            session.scalars(
                select(ImportedDocument.id).where(ImportedDocument.import_id == import_id)
            )
        )
        chunks = session.scalar(
            select(func.count())
            .select_from(DocumentChunk)
            .where(DocumentChunk.document_id.in_(document_ids))
        )
        chunk_ids = session.scalars(
            select(DocumentChunk.id).where(DocumentChunk.document_id.in_(document_ids))
        ).all()
        forgotten = delete_records(
            session, [MemoryRecord.source_id.in_([f"chunk:{i}" for i in chunk_ids])]
        )
        examples = _forget_examples(session, import_id)
        session.execute(delete(DocumentChunk).where(DocumentChunk.document_id.in_(document_ids)))
        session.execute(delete(ImportedDocument).where(ImportedDocument.id.in_(document_ids)))
        session.delete(record)
    with contextlib.suppress(FileNotFoundError):
        upload_path(settings, import_id).unlink()
    return {
        "id": import_id,
        "deleted": True,
        "documents": len(document_ids),
        "chunks": chunks or 0,
        "memory_records": len(forgotten),
        "examples": examples,
    }


def _examples_note(counts: dict[str, Any]) -> str | None:
    """What became of the training examples made from the import, in words."""
    if "examples_kinds" not in counts:
        return None
    kinds = " and ".join(counts["examples_kinds"]) or "no"
    return (
        f"{counts.get('examples_made', 0)} training examples kept ({kinds} examples, as "
        f"imports.examples says), {counts.get('examples_not_kept', 0)} not kept (duplicates, "
        "quality): GET /api/examples?source=import lists them with their chunk"
    )


def _kinds(setting: str) -> tuple[ExampleKind, ...]:
    """The example kinds imports.examples names."""
    if setting == "both":
        return KINDS
    return tuple(kind for kind in KINDS if kind == setting)


def _store_examples(
    session: Session,
    settings: Settings,
    record: ImportRecord,
    document: ImportedDocument,
    made: list[DocumentExample],
) -> dict[str, Any]:
    """Curate the examples made from ``document`` against its owner's kept examples and store
    them (source ``import``), kept ones active, with the chunk each came from; the counts."""
    owner = record.user_id
    # Copies and all but identical chats only: the questions asked about one sentence all end
    # in that sentence, so the usual near-duplicate threshold would keep one and drop the rest.
    curator = Curator(CurationPolicy(dedup=DedupSettings(threshold=0.95)))
    for example in kept_examples(session, owner):
        curator.remember(example)
    totals = CurationResult()
    decided = [
        (item, curator.decide(Example(item.messages, owner, "import", id=f"#{i}"), totals))
        for i, item in enumerate(made)
    ]
    session.add_all(
        TrainingExample(
            user_id=owner,
            source="import",
            messages=[dict(m) for m in decision.example.messages],
            active=decision.state == "kept",
            state=decision.state,
            reason=decision.reason,
            detail=decision.detail,
            provenance={
                "importer": "document",
                "import_id": record.id,
                "document_id": document.id,
                "chunk": item.chunk,
                "kind": item.kind,
            },
        )
        for item, decision in decided
    )
    return {
        "examples_made": len(totals.kept),
        "examples_not_kept": len(decided) - len(totals.kept),
        "examples_kinds": sorted({item.kind for item in made}),
    }


def _forget_examples(session: Session, import_id: int) -> int:
    """Delete the examples an import made; those a version trained on are kept for its lineage
    but no longer trained on. How many were deleted or withdrawn."""
    ids = list(
        session.scalars(
            select(TrainingExample.id).where(
                TrainingExample.source == "import",
                TrainingExample.provenance["import_id"].as_integer() == import_id,
            )
        )
    )
    if not ids:
        return 0
    in_lineage = set(
        session.scalars(select(VersionExample.example_id).where(VersionExample.example_id.in_(ids)))
    )
    session.execute(
        update(TrainingExample)
        .where(TrainingExample.id.in_(in_lineage))
        .values(active=False, detail=f"import {import_id} was deleted")
    )
    session.execute(
        delete(TrainingExample).where(
            TrainingExample.id.in_([i for i in ids if i not in in_lineage])
        )
    )
    return len(ids)


def _no_engine() -> Engine:
    raise RuntimeError(
        'memory.embedding_model = "served" embeds with the served model, which only the worker '
        "loads: import through the server (POST /api/import) or with a running worker"
    )


def _chunk_title(title: str, headings: Sequence[str]) -> str:
    return " > ".join([title, *headings]) if title else " > ".join(headings)


def _embedded_chunks(
    settings: Settings,
    chunks: Sequence[Chunk],
    title: str,
    report: Callable[[float, str], None],
    engine: Callable[[], Engine],
) -> tuple[str, npt.NDArray[np.float32]] | None:
    """The chunks' vectors by the memory's embedding model (its name, the vectors), or None
    when memory is off. Done before the store's transaction: embedding takes a while."""
    if not settings.memory.enabled or not chunks:
        return None
    report(0.6, "embedding")
    options = settings.memory
    load, _name = embedder_loaders(settings.base_model, options.embedding_device, engine)
    embedder = load(options.embedding_model)
    texts = [f"{_chunk_title(title, c.headings)}\n{c.text}" for c in chunks]
    parts = []
    for start in range(0, len(texts), 64):
        parts.append(embedder.embed(texts[start : start + 64]))
        report(0.6 + 0.2 * min(start + 64, len(texts)) / len(texts), "embedding")
    return embedder.name, np.concatenate(parts)


def _remember_chunks(
    session: Session,
    settings: Settings,
    record: ImportRecord,
    document: ImportedDocument,
    chunks: Sequence[Chunk],
    embedded: tuple[str, npt.NDArray[np.float32]],
) -> int:
    """Write the document's chunks into memory with their vectors, in the import's transaction:
    the import's tags, the importer's (site, file, folder) and keywords."""
    stored = session.scalars(
        select(DocumentChunk).where(DocumentChunk.document_id == document.id)
    ).all()
    by_index = {c.index: c for c in stored}
    records = [
        NewRecord(
            user_id=record.user_id,
            kind="chunk",
            text=chunk.text,
            title=_chunk_title(document.title, chunk.headings),
            source=record.source,
            source_id=f"chunk:{by_index[chunk.index].id}",
            shared=record.shared,
            tags=record.tags or [],
            import_tags=import_tags(record.source, record.kind),
        )
        for chunk in chunks
    ]
    ids = add_records(session.connection(), records, auto_tags=settings.memory.auto_tags)
    model, vectors = embedded
    store_vectors(session, model, ids, vectors)
    return len(ids)
