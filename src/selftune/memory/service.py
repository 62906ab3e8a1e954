"""Memory for one server process: records written and embedded in the background, a vector index
kept in step with the store, and hybrid search.

The store is the truth: records, tags and vectors live in its tables. The vector index is a cache
of one embedding model's vectors, saved atomically under ``<data_dir>/memory`` and rebuilt from
the store when its file is missing or belongs to another model. A background thread does the
slow parts, so no chat waits on them: it writes the memory records of answered chats with their
vectors in one transaction, embeds records others wrote without a vector (notes, corrections),
adds vectors written by the worker (imports, re-embedding) to the index, and at start remembers
the answered chats memory lacks (a crash between a chat's commit and its memory record, or chats
from before memory was on).

Changing the embedding model (``memory.embedding_model``) queues a ``memory_reembed`` job; search
goes on with the old model's vectors until the new model covers every record, then switches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from selftune.atomic import fsync_path
from selftune.memory import pgvector
from selftune.memory.embedder import TextEmbedder, embedder_name, load_embedder
from selftune.memory.index import IndexFileError, VectorIndex
from selftune.memory.keywords import keyword_search
from selftune.memory.rank import RankedHit, fuse, rarity
from selftune.memory.records import (
    NewRecord,
    Scope,
    TagFilter,
    add_records,
    count_visible,
    interaction_record,
    matching,
    tag_sizes,
    visible,
)
from selftune.memory.vectors import (
    BATCH,
    from_bytes,
    pending_records,
    record_text,
    store_vectors,
    write_vectors,
)
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.schema import Feedback, Interaction, MemoryRecord, MemoryTag, MemoryVector

__all__ = [
    "Hit",
    "Memory",
    "MemoryConfig",
    "SearchQuery",
]

log = logging.getLogger(__name__)

_SYNC_BATCH = 5000  # vectors read from the store at a time
_SAVE_EVERY = 1000  # vectors added (and a tenth of the index) before it is saved again
_SAVE_IDLE_SECONDS = 30.0  # and when idle, at most this often
_SEARCH_WAIT_SECONDS = 0.2  # a search waits this long for the index (rebuilding) at most
MODES = ("hybrid", "vector", "keyword")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """What :class:`Memory` needs of the settings (``[memory]``)."""

    embedding_model: str
    folder: Path  # where the index is saved
    auto_tags: int = 3
    tag_weight: float = 0.5
    exact_below: int = 10_000
    poll_seconds: float = 1.0
    record_chats: bool = True  # and remember, at start, chats a crash kept from memory


@dataclasses.dataclass(frozen=True)
class SearchQuery:
    text: str
    k: int = 10
    tags: TagFilter = dataclasses.field(default_factory=TagFilter)
    mode: str = "hybrid"  # "hybrid" | "vector" | "keyword"


@dataclasses.dataclass(frozen=True)
class Hit:
    """A search result: the record and how it was ranked."""

    record: dict[str, Any]  # id, kind, text, title, source, user, shared, created_at
    tags: list[str]
    ranked: RankedHit


@dataclasses.dataclass
class _Interaction:
    record: NewRecord


class Memory:
    """The server's memory: call :meth:`start` once, :meth:`stop` at shutdown."""

    def __init__(
        self,
        db: Database,
        config: MemoryConfig,
        *,
        loader: Callable[[str], TextEmbedder] = load_embedder,
        name_of: Callable[[str], str] = embedder_name,
    ) -> None:
        """``loader`` loads a model by its spec, ``name_of`` names it without loading it."""
        self.db, self.config = db, config
        self._loader, self._name_of = loader, name_of
        self._lock = threading.RLock()  # the index and the fields below
        self._embedder: TextEmbedder | None = None
        self._index: VectorIndex | None = None
        self._model: str | None = None  # the model whose vectors the index holds
        self._last_vector = 0  # the last memory_vectors.id the index holds
        self._unsaved = 0
        self._pending_after = 0  # records up to this id have vectors (or were tried)
        self._queue: queue.Queue[_Interaction] = queue.Queue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "starting"  # "starting" | "building" | "ready" | "failed"
        self.error: str | None = None
        self._counts: dict[Any, tuple[float, Any]] = {}  # cached counts for ranking
        self._query_embedder: TextEmbedder | None = None  # embeds queries for the index
        self._spec: str | None = None  # the query embedder's spec (model name or folder)
        self._switch_checked = 0.0
        self._saved_at = 0.0  # time.monotonic() of the last save
        # Where the backfill of unremembered chats has come to: (created_at, id).
        self._backfill_after: tuple[dt.datetime, str] = (dt.datetime(1970, 1, 1), "")
        self._backfill_done = False
        # PostgreSQL with pgvector searches the vectors itself: no index in this process.
        self._in_database = pgvector.has_pgvector(db.engine)
        self._dim = 0  # the dimension of the model search uses

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="selftune-memory", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            if self._unsaved:
                self._save()

    def wake(self) -> None:
        """Look for new records and vectors now rather than at the next poll."""
        self._wake.set()

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until everything recorded so far is embedded and indexed (for tests and
        benchmarks); whether it was within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state == "failed":
                return False
            with self.db.read() as session:
                # Counted down once written, not when taken off the queue.
                behind = self.state != "ready" or self._queue.unfinished_tasks > 0
                behind = behind or (self.config.record_chats and not self._backfill_done)
                if not behind and self._model is not None:
                    behind = bool(pending_records(session, self._model, limit=1))
                    newest = session.scalar(
                        select(func.max(MemoryVector.id)).where(MemoryVector.model == self._model)
                    )
                    indexed = self._in_database or (newest or 0) <= self._last_vector
                    behind = behind or not indexed
            if not behind:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    # ---- writing ----------------------------------------------------------------------------

    def write(self, records: Sequence[NewRecord]) -> list[int]:
        """Commit ``records`` now (found by keyword at once) and embed them in the background;
        their ids."""
        with self.db.write() as session:
            ids = add_records(session.connection(), records, auto_tags=self.config.auto_tags)
        self._wake.set()
        return ids

    def remember(self, record: NewRecord) -> None:
        """Record ``record`` (an answered chat) in the background, with its vector: the
        caller's reply does not wait for the write or the embedding."""
        self._queue.put(_Interaction(record))
        self._wake.set()

    def forget(self, record_ids: Sequence[int]) -> None:
        """Drop deleted records from the index (the store's rows are already gone)."""
        with self._lock:
            if self._index is not None and record_ids:
                self._index.remove(np.asarray(record_ids, dtype=np.int64))
                self._unsaved += len(record_ids)

    # ---- search -----------------------------------------------------------------------------

    @property
    def model(self) -> str | None:
        return self._model

    def embedder(self) -> TextEmbedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._loader(self.config.embedding_model)
            return self._embedder

    def search(self, query: SearchQuery, scope: Scope) -> list[Hit]:
        """The records ``scope`` may see that best answer ``query``, best first."""
        if query.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {query.mode!r}")
        where = matching(scope, query.tags)
        wanted = max(query.k * 5, 50)
        keyword: list[tuple[int, float]] = []
        vector: list[tuple[int, float]] = []
        with self.db.read() as session:
            if query.mode in ("hybrid", "keyword"):
                keyword = keyword_search(session, query.text, where, wanted)
            if query.mode in ("hybrid", "vector") and self.state == "ready":
                vector = self._vector_search(session, query, scope, where, wanted)
            ids = list(dict.fromkeys([i for i, _ in keyword] + [i for i, _ in vector]))
            channels = self._channels(session, ids)
            tag_rarity = self._rarity(session, scope, {t for ts in channels.values() for t in ts})
            hits = fuse(keyword, vector, channels, tag_rarity, tag_weight=self.config.tag_weight)
            hits = hits[: query.k]
            return self._hits(session, hits)

    def _vector_search(
        self,
        session: Session,
        query: SearchQuery,
        scope: Scope,
        where: Sequence[ColumnElement[bool]],
        k: int,
    ) -> list[tuple[int, float]]:
        embedder, index, model = self._query_embedder, self._index, self._model
        if embedder is None or model is None:
            return []  # no model to embed queries for this index: keyword search only
        vector = embedder.embed([query.text])[0]
        unfiltered = scope.everything and query.tags.empty  # any record may be returned
        if self._in_database:
            exact = not unfiltered and self._count(session, scope, query.tags, where) <= (
                self.config.exact_below
            )
            return pgvector.nearest(session, model, self._dim, vector, where, k, exact=exact)
        if index is None:
            return []
        if unfiltered:
            with self._index_lock() as got:
                if not got:
                    return []
                keys, scores = index.search(vector, k)
            return self._alive(session, keys, scores, where, k)
        if self._count(session, scope, query.tags, where) <= self.config.exact_below:
            allowed = np.fromiter(
                session.scalars(select(MemoryRecord.id).where(*where)), dtype=np.int64
            )
            with self._index_lock() as got:
                if not got:
                    return []
                keys, scores = index.exact(vector, allowed, k)  # ids not indexed are skipped
            return [(int(a), float(b)) for a, b in zip(keys, scores, strict=True)]
        # Many records pass the filter: search the index, keep the ones that pass, and look
        # further while too few did.
        fetch = k * 4
        while True:
            with self._index_lock() as got:
                if not got:
                    return []
                size = len(index)
                keys, scores = index.search(vector, min(fetch, size))
            found = self._alive(session, keys, scores, where, k)
            if len(found) >= k or fetch >= size:
                return found
            fetch *= 4

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[bool]:
        """Hold the index for a search, unless it is busy (growing into a new structure, which
        takes minutes at a million vectors): then the search goes on with keywords only."""
        got = self._lock.acquire(timeout=_SEARCH_WAIT_SECONDS)
        try:
            yield got
        finally:
            if got:
                self._lock.release()

    def _count(
        self,
        session: Session,
        scope: Scope,
        tags: TagFilter,
        where: Sequence[ColumnElement[bool]],
    ) -> int:
        """How many records ``where`` (made from ``scope`` and ``tags``) selects, cached."""
        count: int = self._cached(("count", scope, tags), lambda: count_visible(session, where))
        return count

    @staticmethod
    def _alive(
        session: Session,
        keys: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        where: Sequence[ColumnElement[bool]],
        k: int,
    ) -> list[tuple[int, float]]:
        """Of the index's results, those still in the store and passing ``where``."""
        ids = [int(key) for key in keys]
        passing: set[int] = set()
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            passing.update(
                session.scalars(select(MemoryRecord.id).where(MemoryRecord.id.in_(chunk), *where))
            )
        found = [(i, float(s)) for i, s in zip(ids, scores, strict=True) if i in passing]
        return found[:k]

    @staticmethod
    def _channels(session: Session, ids: Sequence[int]) -> dict[int, list[str]]:
        channels: dict[int, list[str]] = {}
        if ids:
            rows = session.execute(
                select(MemoryTag.record_id, MemoryTag.tag).where(
                    # Channels are the tags people give: an importer's file: and site: tags
                    # are rare for nearly every document, and would lift short ones instead.
                    MemoryTag.record_id.in_(ids),
                    MemoryTag.origin == "user",
                )
            )
            for rid, tag in rows:
                channels.setdefault(int(rid), []).append(tag)
        return channels

    def _rarity(self, session: Session, scope: Scope, tags: set[str]) -> dict[str, float]:
        if not tags or self.config.tag_weight == 0:
            return {}
        total = self._cached(("total", scope), lambda: count_visible(session, [visible(scope)]))
        sizes = self._cached(
            ("sizes", scope, frozenset(tags)), lambda: tag_sizes(session, scope, sorted(tags))
        )
        return rarity(sizes, total)

    def _cached(self, key: Any, compute: Callable[[], Any], seconds: float = 10.0) -> Any:
        now = time.monotonic()
        hit = self._counts.get(key)
        if hit is not None and now - hit[0] < seconds:
            return hit[1]
        value = compute()
        if len(self._counts) > 1000:
            self._counts.clear()
        self._counts[key] = (now, value)
        return value

    @staticmethod
    def _hits(session: Session, ranked: Sequence[RankedHit]) -> list[Hit]:
        ids = [hit.record_id for hit in ranked]
        records = {
            r.id: r for r in session.scalars(select(MemoryRecord).where(MemoryRecord.id.in_(ids)))
        }
        tags: dict[int, list[str]] = {}
        for rid, tag in session.execute(
            select(MemoryTag.record_id, MemoryTag.tag)
            .where(MemoryTag.record_id.in_(ids))
            .order_by(MemoryTag.tag)
        ):
            tags.setdefault(int(rid), []).append(tag)
        hits = []
        for hit in ranked:
            record = records.get(hit.record_id)
            if record is not None:
                hits.append(Hit(record_view(record), tags.get(record.id, []), hit))
        return hits

    # ---- the background thread --------------------------------------------------------------

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # below the threads that serve
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            self._open_index()
        except Exception as exc:  # the server goes on serving; search falls back to keywords
            log.exception("memory: the vector index could not be opened")
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        while not self._stopping.is_set():
            try:
                busy = self._step()
            except Exception:
                log.exception("memory: a background step failed; retrying")
                busy = False
                self._stopping.wait(self.config.poll_seconds)
            if not busy:
                self._wake.wait(self.config.poll_seconds)
                self._wake.clear()

    def _step(self) -> bool:
        """One round of background work; whether there may be more right away."""
        self._switch_when_reembedded()
        busy = self._write_remembered()
        busy = busy or self._backfill()
        busy = self._embed_pending() or busy
        busy = self._sync() or busy
        with self._lock:
            size = len(self._index) if self._index is not None else 0
            due = self._unsaved >= max(_SAVE_EVERY, size // 10)
            idle = not busy and time.monotonic() - self._saved_at > _SAVE_IDLE_SECONDS
            if self._unsaved and (due or idle):
                self._save()
        return busy

    def _write_remembered(self) -> bool:
        items: list[_Interaction] = []
        with contextlib.suppress(queue.Empty):
            while len(items) < BATCH:
                items.append(self._queue.get_nowait())
        if not items:
            return False
        embedder = self.embedder()
        records = [item.record for item in items]
        vectors = embedder.embed([record_text(r.title, r.text) for r in records])
        with self.db.write() as session:
            # A chat rated down before its record was written stays out (see api/chat_memory).
            disputed = set(
                session.scalars(
                    select(Feedback.interaction_id).where(
                        Feedback.interaction_id.in_([r.source_id for r in records]),
                        Feedback.rating < 0,
                    )
                )
            )
            # And one already written (by the backfill of chats a crash kept from memory).
            written = set(
                session.scalars(
                    select(MemoryRecord.source_id).where(
                        MemoryRecord.source_id.in_([r.source_id for r in records])
                    )
                )
            )
            skip = disputed | written
            keep = [n for n, r in enumerate(records) if r.source_id not in skip]
            ids = add_records(
                session.connection(), [records[n] for n in keep], auto_tags=self.config.auto_tags
            )
            store_vectors(session, embedder.name, ids, vectors[keep])
        for _ in items:
            self._queue.task_done()
        return True

    def _backfill(self) -> bool:
        """Remember answered chats the store has and memory lacks, oldest first, a batch at a
        time: those a crash kept from the queue, and the history recorded before memory was
        on. Whether a batch was found."""
        if not self.config.record_chats or self._backfill_done:
            return False
        after_time, after_id = self._backfill_after
        remembered = select(MemoryRecord.id).where(MemoryRecord.source_id == Interaction.id)
        disputed = select(Feedback.id).where(
            Feedback.interaction_id == Interaction.id, Feedback.rating < 0
        )
        with self.db.read() as session:
            rows = session.execute(
                select(
                    Interaction.id,
                    Interaction.user_id,
                    Interaction.kind,
                    Interaction.messages,
                    Interaction.response,
                    Interaction.created_at,
                )
                .where(
                    or_(
                        Interaction.created_at > after_time,
                        and_(Interaction.created_at == after_time, Interaction.id > after_id),
                    ),
                    ~remembered.exists(),
                    ~disputed.exists(),
                )
                .order_by(Interaction.created_at, Interaction.id)
                .limit(BATCH)
            ).all()
        if not rows:
            self._backfill_done = True
            return False
        self._backfill_after = (rows[-1].created_at, rows[-1].id)
        for row in rows:
            record = interaction_record(
                interaction_id=row.id,
                user_id=row.user_id,
                kind=row.kind,
                messages=row.messages or [],
                answer=row.response,
            )
            if record is not None:
                self._queue.put(_Interaction(record))
        return True

    def _embed_pending(self) -> bool:
        """Embed records written without a vector (notes, corrections), a batch at a time."""
        model = self._model
        if model is None or self.embedder().name != model:
            return False  # a re-embedding job writes the new model's vectors
        with self.db.read() as session:
            batch = pending_records(session, model, after=self._pending_after)
        if not batch:
            return False
        write_vectors(self.db, model, batch, self.embedder().embed([t for _, t in batch]))
        self._pending_after = batch[-1][0]
        return True

    def _sync(self) -> bool:
        """Add vectors the store has and the index does not; whether a full batch was read."""
        model, index = self._model, self._index
        if model is None or index is None:
            return False
        added, last = self._catch_up(index, model, self._last_vector)
        with self._lock:
            self._last_vector = last
            self._unsaved += added
        return added == _SYNC_BATCH

    def _catch_up(self, index: VectorIndex, model: str, after: int) -> tuple[int, int]:
        """Add to ``index`` a batch of ``model``'s vectors written after vector id ``after``;
        how many, and the last vector id added."""
        with self.db.read() as session:
            rows = session.execute(
                select(MemoryVector.id, MemoryVector.record_id, MemoryVector.vector)
                .where(MemoryVector.model == model, MemoryVector.id > after)
                .order_by(MemoryVector.id)
                .limit(_SYNC_BATCH)
            ).all()
        if not rows:
            return 0, after
        keys = np.array([r[1] for r in rows], dtype=np.int64)
        vectors = np.stack([from_bytes(r[2], index.dim) for r in rows])
        with self._lock:
            index.add(keys, vectors)
        return len(rows), int(rows[-1][0])

    def _switch_when_reembedded(self) -> None:
        """While the index holds another model than the configured one, look (every minute)
        whether the configured model now covers every record, and switch to it if so."""
        configured = self._name_of(self.config.embedding_model)
        now = time.monotonic()
        if self._model == configured or now - self._switch_checked < 60:
            return
        self._switch_checked = now
        with self.db.read() as session:
            missing = pending_records(session, configured, limit=1)
        if not missing:
            log.info("memory: every record has a vector of %s; switching to it", configured)
            self._open_index()

    # ---- the index file ---------------------------------------------------------------------

    def _paths(self, model: str) -> tuple[Path, Path]:
        slug = hashlib.sha256(model.encode()).hexdigest()[:16]
        return (
            self.config.folder / f"vectors-{slug}.faiss",
            self.config.folder / f"vectors-{slug}.json",
        )

    def _open_index(self) -> None:
        """Load the saved index of the model search uses, or build it from the store, then
        serve searches from it (the index it replaces serves them until then)."""
        model = self._active_model()
        configured = self._name_of(self.config.embedding_model)
        meta = self._read_meta(model)
        spec = self.config.embedding_model if model == configured else meta.get("spec")
        query_embedder = self._loader(spec) if isinstance(spec, str) else None
        if query_embedder is not None and query_embedder.name != model:
            query_embedder = None  # the folder changed since: its vectors are not comparable
        dim = query_embedder.dim if query_embedder is not None else self._stored_dim(model)
        if self._in_database:
            with self._lock:
                self._model, self._dim, self._spec = model, dim, spec
                self._query_embedder = query_embedder
            self.state = "ready"  # exact scans answer until the HNSW index is built
            if dim:
                pgvector.ensure_index(self.db.engine, model, dim)
            return
        index, last = None, 0
        if meta.get("dim") == dim:
            try:
                index = VectorIndex.load(self._paths(model)[0], dim, threads=1)
                last = int(meta["last_vector"])
            except (IndexFileError, KeyError, ValueError) as exc:
                log.info("memory: rebuilding the vector index of %s (%s)", model, exc)
        with self.db.read() as session:
            stored = session.scalar(
                select(func.count()).select_from(MemoryVector).where(MemoryVector.model == model)
            )
        if index is not None and len(index) > (stored or 0) * 1.05 + 100:
            index = None  # many records were deleted while the server was down: start over
        if index is None:
            # One thread: the server's cores are for answering.
            index, last = VectorIndex(dim, threads=1), 0
        while not self._stopping.is_set():
            added, last = self._catch_up(index, model, last)
            if added < _SYNC_BATCH:
                break
        with self._lock:
            self._index, self._model, self._last_vector = index, model, last
            self._dim = dim
            self._query_embedder, self._spec = query_embedder, spec
            self._unsaved = max(self._unsaved, 1)  # save the description with the spec
        self.state = "ready"

    def _read_meta(self, model: str) -> dict[str, Any]:
        try:
            meta = json.loads(self._paths(model)[1].read_text())
        except (OSError, ValueError) as exc:
            log.info("memory: no saved vector index of %s (%s)", model, exc)
            return {}
        return meta if isinstance(meta, dict) and meta.get("model") == model else {}

    def _active_model(self) -> str:
        """The configured model, unless another model's vectors cover more records: then that
        one, while a ``memory_reembed`` job embeds every record with the configured model."""
        configured = self._name_of(self.config.embedding_model)
        with self.db.read() as session:
            counts = dict(
                session.execute(
                    select(MemoryVector.model, func.count()).group_by(MemoryVector.model)
                ).all()
            )
        best = max(counts, key=lambda m: counts[m], default=configured)
        if counts.get(configured, 0) >= counts.get(best, 0):
            return configured
        self._queue_reembed()
        return str(best)

    def _queue_reembed(self) -> None:
        jobs.enqueue_once(
            self.db, "memory_reembed", "system", {"model": self.config.embedding_model}
        )

    def _stored_dim(self, model: str) -> int:
        with self.db.read() as session:
            dim = session.scalar(select(MemoryVector.dim).where(MemoryVector.model == model))
        return int(dim or 0)

    def _save(self) -> None:
        """Save the index, then its description (the description last: a crash between the
        two leaves an old description that the next start's size check or sync corrects)."""
        if self._index is None or self._model is None or not len(self._index):
            return  # nothing to keep: an empty index is rebuilt in no time
        self.config.folder.mkdir(parents=True, exist_ok=True)
        index_path, meta_path = self._paths(self._model)
        self._index.save(index_path)
        meta = {
            "model": self._model,
            "spec": self._spec,  # how to load the model that embeds queries for this index
            "dim": self._index.dim,
            "last_vector": self._last_vector,
        }
        _replace_file(meta_path, json.dumps(meta).encode())
        self._unsaved, self._saved_at = 0, time.monotonic()


def record_view(record: MemoryRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind,
        "title": record.title,
        "text": record.text,
        "source": record.source,
        "source_id": record.source_id,
        "user": record.user_id,
        "shared": record.shared,
        "created_at": record.created_at.isoformat(),
    }


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, fsynced, renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
