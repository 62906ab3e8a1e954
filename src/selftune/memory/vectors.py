"""Vectors in the store: which records lack one, writing them, and embedding the records that
lack one. The store holds every vector (``memory_vectors``, little-endian float32 rows); search
indexes are built from it. Light to import: the worker writes vectors without loading any index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from selftune.memory import pgvector
from selftune.memory.embedder import TextEmbedder
from selftune.store.db import Database
from selftune.store.schema import MemoryRecord, MemoryVector, table_of

__all__ = [
    "embed_records",
    "from_bytes",
    "pending_records",
    "record_text",
    "store_vectors",
    "vector_bytes",
    "write_vectors",
]

_VECTORS = table_of(MemoryVector)
BATCH = 32  # records embedded together


def vector_bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes, dim: int) -> npt.NDArray[np.float32]:
    return np.frombuffer(blob, dtype="<f4", count=dim).astype(np.float32)


def record_text(title: str | None, text: str) -> str:
    return f"{title}\n{text}" if title else text


def pending_records(
    session: Session, model: str, *, after: int = 0, limit: int = BATCH
) -> list[tuple[int, str]]:
    """Records after id ``after`` without a vector of ``model``: (id, text to embed)."""
    has_vector = (
        select(MemoryVector.id)
        .where(MemoryVector.record_id == MemoryRecord.id, MemoryVector.model == model)
        .exists()
    )
    stmt = (
        select(MemoryRecord.id, MemoryRecord.title, MemoryRecord.text)
        .where(MemoryRecord.id > after, ~has_vector)
        .order_by(MemoryRecord.id)
        .limit(limit)
    )
    return [(int(i), record_text(title, text)) for i, title, text in session.execute(stmt)]


def store_vectors(
    session: Session, model: str, ids: Sequence[int], vectors: npt.NDArray[np.float32]
) -> None:
    """Write ``vectors`` of ``model`` for records ``ids`` in the caller's transaction."""
    if not ids:
        return
    rows = [
        {"record_id": rid, "model": model, "dim": int(v.shape[0]), "vector": vector_bytes(v)}
        for rid, v in zip(ids, vectors, strict=True)
    ]
    session.execute(insert(_VECTORS), rows)
    if pgvector.has_pgvector(session.connection()):
        pgvector.write_embeddings(session, model, ids, vectors)


def write_vectors(
    db: Database, model: str, batch: Sequence[tuple[int, str]], vectors: npt.NDArray[np.float32]
) -> None:
    """Store the vectors of ``batch``, less records deleted or embedded by others meanwhile."""
    with db.write() as session:
        ids = [rid for rid, _ in batch]
        alive = set(session.scalars(select(MemoryRecord.id).where(MemoryRecord.id.in_(ids))))
        taken = set(
            session.scalars(
                select(MemoryVector.record_id).where(
                    MemoryVector.record_id.in_(ids), MemoryVector.model == model
                )
            )
        )
        keep = [n for n, rid in enumerate(ids) if rid in alive and rid not in taken]
        store_vectors(session, model, [ids[n] for n in keep], vectors[keep])


def embed_records(
    db: Database,
    embedder: TextEmbedder,
    *,
    after: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] = lambda _n: None,
) -> int:
    """Embed every record after id ``after`` that lacks a vector of ``embedder``'s model, a
    batch per transaction; how many were embedded."""
    done = 0
    while not should_stop():
        with db.read() as session:
            batch = pending_records(session, embedder.name, after=after)
        if not batch:
            break
        write_vectors(db, embedder.name, batch, embedder.embed([text for _, text in batch]))
        after = batch[-1][0]
        done += len(batch)
        progress(done)
    return done
