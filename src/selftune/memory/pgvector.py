"""Vector search in PostgreSQL with pgvector, when the store is PostgreSQL and the extension is
installed: the vectors live in the database beside their records, and the database searches
them, so the server keeps no index of its own.

Migration 0008 adds ``memory_vectors.embedding`` (type ``vector``, no fixed dimension, so one
table holds every model's vectors) when ``CREATE EXTENSION vector`` succeeds. Each model gets a
partial HNSW index on ``embedding::vector(<dim>)`` (cosine), built in the background the first
time the server uses that model. A search whose filter leaves few records turns index scans off
for its transaction, so it compares the query with each of them exactly; a wider one lets the
HNSW index find candidates and widens ``hnsw.ef_search`` while too few pass the filter.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    bindparam,
    cast,
    literal_column,
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.types import UserDefinedType

from selftune.store.schema import MemoryRecord, MemoryVector

__all__ = [
    "EMBEDDING_COLUMN",
    "ensure_index",
    "has_pgvector",
    "literal",
    "nearest",
    "write_embeddings",
]

log = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"
_MAX_EF = 1000  # pgvector's largest hnsw.ef_search


_COLUMNS: dict[str, bool] = {}  # by database URL: whether it has the embedding column


def has_pgvector(bind: Engine | Connection) -> bool:
    """Whether the store is PostgreSQL with the ``embedding`` column (pgvector was installed,
    or could be, when migration 0008 ran)."""
    if bind.dialect.name != "postgresql":
        return False
    url = str(bind.engine.url)
    if url not in _COLUMNS:
        # Not SQLAlchemy's inspector, which warns about a column type it does not know.
        with bind.engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_name = 'memory_vectors' AND column_name = :column "
                    "AND table_schema = current_schema()"
                ),
                {"column": EMBEDDING_COLUMN},
            ).scalar()
        _COLUMNS[url] = bool(found)
    return _COLUMNS[url]


def literal(vector: npt.NDArray[np.float32]) -> str:
    """pgvector's text form of a vector: ``[0.1,0.2,...]``."""
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


def write_embeddings(
    session: Session, model: str, ids: Sequence[int], vectors: npt.NDArray[np.float32]
) -> None:
    """Fill the ``embedding`` column of the vectors just inserted (same transaction)."""
    session.execute(
        text(
            "UPDATE memory_vectors SET embedding = CAST(:vector AS vector) "
            "WHERE record_id = :record_id AND model = :model"
        ),
        [
            {"vector": literal(v), "record_id": rid, "model": model}
            for rid, v in zip(ids, vectors, strict=True)
        ],
    )


def _index_name(model: str, dim: int) -> str:
    return f"ix_memory_vectors_hnsw_{hashlib.sha256(f'{model}/{dim}'.encode()).hexdigest()[:16]}"


def ensure_index(engine: Engine, model: str, dim: int) -> None:
    """Build ``model``'s HNSW index if it is missing (concurrently: writes go on meanwhile)."""
    name = _index_name(model, dim)
    quoted = model.replace("'", "''")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        exists = conn.execute(text("SELECT to_regclass(:name)"), {"name": name}).scalar()
        if exists is not None:
            return
        log.info("memory: building the pgvector HNSW index of %s", model)
        conn.execute(
            text(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON memory_vectors USING hnsw "
                f"((embedding::vector({int(dim)})) vector_cosine_ops) "
                f"WHERE model = '{quoted}'"
            )
        )


class _Vector(UserDefinedType[str]):
    """pgvector's ``vector(<dim>)``, for casts in queries."""

    cache_ok = True

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def get_col_spec(self, **_kw: Any) -> str:
        return f"vector({int(self.dim)})"


def nearest(
    session: Session,
    model: str,
    dim: int,
    query: npt.NDArray[np.float32],
    where: Sequence[ColumnElement[bool]],
    k: int,
    *,
    exact: bool,
) -> list[tuple[int, float]]:
    """The ``k`` records nearest ``query`` among those ``where`` selects: (id, cosine), best
    first. ``exact`` compares with every selected record; otherwise the HNSW index is used."""
    # The index's expression (embedding::vector(dim)), so the planner can use the index.
    embedding = cast(literal_column("memory_vectors.embedding"), _Vector(dim))
    distance = embedding.op("<=>", return_type=Float)(
        cast(bindparam("query", literal(query)), _Vector(dim))
    )
    stmt = (
        select(MemoryVector.record_id, (1 - distance).label("score"))
        .join(MemoryRecord, MemoryRecord.id == MemoryVector.record_id)
        .where(MemoryVector.model == model, *where)
        .order_by(distance)
        .limit(k)
    )

    def run() -> list[tuple[int, float]]:
        return [(int(i), float(score)) for i, score in session.execute(stmt)]

    if exact:
        session.execute(text("SET LOCAL enable_indexscan = off"))
        return run()
    ef = max(40, 2 * k)
    while True:
        session.execute(text(f"SET LOCAL hnsw.ef_search = {int(ef)}"))
        rows = run()
        if len(rows) >= k or ef >= _MAX_EF:
            break
        ef = min(_MAX_EF, ef * 4)
    if len(rows) < k:  # the filter passed too few of the index's candidates: look at all
        session.execute(text("SET LOCAL enable_indexscan = off"))
        rows = run()
    return rows
