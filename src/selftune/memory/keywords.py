"""Keyword search: the database's own full-text index of memory records, never rebuilt per
query (SQLite's FTS5 with BM25; PostgreSQL's text search with ``ts_rank_cd``).

A query's words are matched one by one (any word may match, more matches rank higher), so a
question written in full sentences still finds records that share its rarer words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import ColumnElement, column, func, literal_column, select, table
from sqlalchemy.orm import Session

from selftune.memory.tags import STOPWORDS
from selftune.store.schema import MemoryRecord

__all__ = ["keyword_search", "query_words"]

_WORD = re.compile(r"\w+", re.UNICODE)
_MAX_WORDS = 32
_FTS = table("memory_fts", column("rowid"))
# The expression migration 0008 indexes on PostgreSQL.
_PG_DOCUMENT = func.to_tsvector(
    literal_column("'english'"),
    func.coalesce(MemoryRecord.title, "") + " " + MemoryRecord.text,
)


def query_words(query: str) -> list[str]:
    """The words of ``query`` worth matching: those that are not stop words (all of them when
    nothing else is left), lower-cased, without repeats, at most 32."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))
    content = [w for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]
    return (content or words)[:_MAX_WORDS]


def keyword_search(
    session: Session, query: str, where: Sequence[ColumnElement[bool]], limit: int
) -> list[tuple[int, float]]:
    """Up to ``limit`` record ids matching ``query`` among those ``where`` selects, best first,
    with their score (higher is better)."""
    words = query_words(query)
    if not words or limit <= 0:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # Each word quoted: FTS5 reads it as a string, never as query syntax.
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rank = func.bm25(literal_column("memory_fts"))  # lower is better
        stmt = (
            select(MemoryRecord.id, rank)
            .join(_FTS, _FTS.c.rowid == MemoryRecord.id)
            .where(literal_column("memory_fts").op("MATCH")(match), *where)
            .order_by(rank)
            .limit(limit)
        )
        return [(int(i), -float(score)) for i, score in session.execute(stmt)]
    if dialect == "postgresql":
        tsquery = func.to_tsquery(
            literal_column("'english'"), " | ".join(re.sub(r"\W", "", w) for w in words if w)
        )
        score = func.ts_rank_cd(_PG_DOCUMENT, tsquery)
        stmt = (
            select(MemoryRecord.id, score)
            .where(_PG_DOCUMENT.op("@@")(tsquery), *where)
            .order_by(score.desc())
            .limit(limit)
        )
        return [(int(i), float(s)) for i, s in session.execute(stmt)]
    raise RuntimeError(f"keyword search does not support the {dialect!r} database")
