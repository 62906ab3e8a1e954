"""The tables. Every record that comes from a person carries ``user_id``.

Changing a table here needs a new, append-only migration in ``store/migrations/versions``;
``tests/unit/test_store.py`` fails when the migrations and these tables disagree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "KEYWORD_TABLES",
    "MAX_ID",
    "AliasChange",
    "ApiKey",
    "Base",
    "ConnectorReply",
    "Conversation",
    "DocumentChunk",
    "Event",
    "Feedback",
    "ImportRecord",
    "ImportedDocument",
    "Interaction",
    "Job",
    "MemoryRecord",
    "MemorySummary",
    "MemoryTag",
    "MemoryVector",
    "TrainingExample",
    "User",
    "Version",
    "VersionExample",
    "Worker",
    "as_utc",
    "table_of",
    "utcnow",
]


# The largest id an Integer column holds everywhere (PostgreSQL's int4; SQLite's is wider): an
# id a client sends beyond it names nothing, and must not reach the database.
MAX_ID = 2**31 - 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every time in the store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # SHA-256 of the key; the key itself is shown once at creation and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key's first characters, to name it in listings and commands (never enough to use it).
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    # An admin key may change what every user is served (promote, roll back, load adapters).
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    name: Mapped[str | None] = mapped_column(String(64))  # a label: "laptop", "ci"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Written at most once a minute per key (api/auth.py), not on every request.
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Interaction(Base):
    """One request and the answer served for it, with the version that answered."""

    __tablename__ = "interactions"
    # GET /api/interactions reads newest first, by (created_at, id): these indexes are that
    # order, everyone's (an admin's view) and one user's.
    __table_args__ = (
        Index("ix_interactions_created_at_id", "created_at", "id"),
        Index("ix_interactions_user_created_at_id", "user_id", "created_at", "id"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "chat" | "completion"
    model: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))  # None: base
    messages: Mapped[list[Any]] = mapped_column(JSON)  # chat messages, or [{"prompt": ...}]
    response: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    chat_template: Mapped[str | None] = mapped_column(Text)  # set when the request overrode it
    # The memory passages added to the prompt (record id, source, score); None: no retrieval.
    memory: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    rating: Mapped[int] = mapped_column(Integer)  # 1 or -1
    correction: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingExample(Base):
    """A chat the model should learn, with where it came from."""

    __tablename__ = "training_examples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # "correction" | "rating" | "upstream" | "submitted"
    source: Mapped[str] = mapped_column(String(32))
    interaction_id: Mapped[str | None] = mapped_column(ForeignKey("interactions.id"), index=True)
    feedback_id: Mapped[int | None] = mapped_column(ForeignKey("feedback.id"))
    messages: Mapped[list[Any]] = mapped_column(JSON)  # ends with the assistant turn to learn
    # True: training uses it. False: superseded/withdrawn, or curation did not keep it.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # What curation decided: "kept" | "rejected" | "flagged" (held for review); with the
    # reason (selftune.curate.Reason) and a detail a person can check for the last two.
    state: Mapped[str] = mapped_column(String(16), default="kept", server_default="kept")
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    # Where a submitted example came from: importer, file name, line, content hash (docs/data.md).
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "train"
    status: Mapped[str] = mapped_column(String(16), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(64), default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Version(Base):
    """A trained adapter. Its directory under ``versions/`` is immutable once written."""

    __tablename__ = "versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    base_model: Mapped[str] = mapped_column(String(512))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    path: Mapped[str] = mapped_column(Text)
    chat_template: Mapped[str] = mapped_column(Text)
    train_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    eval_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    gate: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # decision and reasons
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VersionExample(Base):
    """Which examples trained a version, and which were held out to evaluate it."""

    __tablename__ = "version_examples"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    example_id: Mapped[int] = mapped_column(ForeignKey("training_examples.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # "train" | "heldout"


class AliasChange(Base):
    """Append-only history of the serving alias; the newest row is the current target."""

    __tablename__ = "alias_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))  # None: base
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    action: Mapped[str] = mapped_column(String(16))  # "promote" | "rollback"
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Worker(Base):
    """A training worker process, so the server can tell whether anyone will take its jobs."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    state: Mapped[str] = mapped_column(String(16))  # "starting" | "ready" | "busy" | "stopped"
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ConnectorReply(Base):
    """A reply a connector (``youtube``) wrote to something posted elsewhere: ``pending``
    approval, ``approved`` (posted at the connector's next run), ``posted`` or ``rejected``."""

    __tablename__ = "connector_replies"
    __table_args__ = (UniqueConstraint("connector", "item_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    connector: Mapped[str] = mapped_column(String(32))
    item_id: Mapped[str] = mapped_column(String(128))  # the comment answered; never twice
    parent_id: Mapped[str] = mapped_column(String(128))  # where the reply goes (the thread)
    video_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)  # the commenter
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id"))
    chain: Mapped[list[Any]] = mapped_column(JSON)  # [{"author", "text"}], oldest first
    reply: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    posted_id: Mapped[str | None] = mapped_column(String(128))  # the posted comment's id
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ImportRecord(Base):
    """One import of a file, a web page or a text: who asked, what it was, how it went. Its
    job (``kind`` "import") does the work; documents and chunks are written when it succeeds."""

    __tablename__ = "imports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "file" | "url" | "text"
    source: Mapped[str] = mapped_column(Text)  # the file's name, the URL, or "text"
    title: Mapped[str | None] = mapped_column(Text)  # given with a text, else the document's
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Its chunks in memory are found by every user, not only by ``user_id``.
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # "queued" | "running" | "succeeded" | "failed" | "cancelled"
    state: Mapped[str] = mapped_column(String(16), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    error_code: Mapped[str | None] = mapped_column(String(32))  # ImportRefused/FetchRefused's
    error: Mapped[str | None] = mapped_column(Text)
    # Hash, size, importer and its version, final URL (selftune.imports.Provenance).
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # documents, chunks, examples_made, duplicates_dropped, rejected: what the import made.
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ImportedDocument(Base):
    """A document an import made: its text as parsed (Markdown or plain text)."""

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("imports.id"), index=True)
    title: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))  # "text" | "markdown" | "html" | "pdf"
    text: Mapped[str] = mapped_column(Text)
    # What the source said of itself: author, date, encoding, pages ("metadata" is
    # SQLAlchemy's own attribute, hence the name).
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DocumentChunk(Base):
    """A piece of a document, with where it lies in the text and the headings above it."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("document_id", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # its place in the document, from 0
    start: Mapped[int] = mapped_column(Integer)  # offsets in the document's text
    end: Mapped[int] = mapped_column(Integer)
    headings: Mapped[list[Any]] = mapped_column(JSON, default=list)  # outermost first
    text: Mapped[str] = mapped_column(Text)


class MemoryRecord(Base):
    """One thing memory holds: an interaction, a correction, an imported chunk or a note.

    Private to ``user_id`` unless ``shared``; ``source_id`` names what it was made from (an
    interaction, a feedback or a chunk id) so that deleting that deletes it too.
    """

    __tablename__ = "memory_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # interaction|correction|chunk|note
    source_id: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str | None] = mapped_column(Text)  # what to cite: a URL, a file, "chat"
    title: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MemoryTag(Base):
    """A record's knowledge channel. ``origin``: "user" (given with it), "import" (the
    importer's site, file and folder) or "auto" (its keywords)."""

    __tablename__ = "memory_tags"
    record_id: Mapped[int] = mapped_column(
        ForeignKey("memory_records.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    origin: Mapped[str] = mapped_column(String(8))


class MemoryVector(Base):
    """A record's embedding by one model. ``id`` grows with every vector written, so a search
    index catches up by reading the vectors after the last id it holds."""

    __tablename__ = "memory_vectors"
    __table_args__ = (UniqueConstraint("record_id", "model"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(
        ForeignKey("memory_records.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(255), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian float32, normalized


class MemorySummary(Base):
    """The served model's summary of one channel as one scope sees it (a user's own records and
    the shared ones; ``user_id`` None: every record, for an admin). ``fingerprint`` hashes
    the records it covered, so a change to them shows the summary is stale."""

    __tablename__ = "memory_summaries"
    __table_args__ = (UniqueConstraint("tag", "scope"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tag: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(140))  # "user:<id>" or "all"
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    record_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    fingerprint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))  # the version that wrote it
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# Full-text search tables the store keeps beside the mapped ones (SQLite's FTS5 index of
# memory_records and its shadow tables): made by migration 0008, not declared here.
KEYWORD_TABLES = frozenset(
    {
        "memory_fts",
        "memory_fts_config",
        "memory_fts_data",
        "memory_fts_docsize",
        "memory_fts_idx",
    }
)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SettingOverride(Base):
    """Values of one settings section changed at run time (PATCH /api/settings/autopilot),
    laid over the settings file's by every process."""

    __tablename__ = "setting_overrides"
    section: Mapped[str] = mapped_column(String(32), primary_key=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class, for prepared Core statements on hot paths."""
    return Base.metadata.tables[model.__tablename__]
