"""Memory on PostgreSQL with pgvector: the database holds and searches the vectors (an HNSW
index per model, exact scans under narrow filters), through the same Memory.search as SQLite.

The server is the PostgreSQL with pgvector that the ``pgserver`` package ships (a dev
dependency), started on a private socket for this module; the test is skipped where it is not
installed."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from selftune.memory.pgvector import has_pgvector
from selftune.memory.records import NewRecord, Scope, TagFilter
from selftune.memory.service import Memory, MemoryConfig, SearchQuery
from selftune.store.db import Database
from tests.integration.test_memory_scope import WORDS, embedder, hashed

pgserver = pytest.importorskip(
    "pgserver", reason="pgserver (a PostgreSQL with pgvector) is not installed"
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    # Not under pytest's tmp_path: run as root, pgserver starts PostgreSQL as its own user,
    # who cannot enter pytest's private /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="selftune-pgvector-"))
    postgres = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield str(postgres.get_uri()).replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        postgres.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def db(server: str) -> Iterator[Database]:
    database = Database(server)
    with database.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    database.migrate()
    yield database
    database.dispose()


def _memory(db: Database, root: Path, **config: int) -> Memory:
    # No channel boost: this module checks the vector search alone. With it, the one "rare"
    # record of bob's (cosine 0.517, tied with 17 others around rank 50) jumped into the top
    # five whenever the database's order of ties put it among the 50 candidates.
    options = MemoryConfig(
        "hashed-words",
        root / "memory",
        tag_weight=0.0,
        **config,  # type: ignore[arg-type]
    )
    return Memory(db, options, loader=embedder, name_of=lambda spec: spec)


def test_vectors_are_searched_in_the_database_exactly_and_by_index(
    db: Database, tmp_path: Path
) -> None:
    assert has_pgvector(db.engine)  # migration 0008 found pgvector
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(WORDS, size=3)) for _ in range(300)]
    records = [
        NewRecord("ann" if n % 3 else "bob", "note", t, tags=["rare"] if n % 50 == 0 else [])
        for n, t in enumerate(texts)
    ]
    for exact_below in (0, 10_000):  # the HNSW index path, then the exact path
        memory = _memory(db, tmp_path / str(exact_below), exact_below=exact_below)
        try:
            if exact_below == 0:
                memory.write(records)
            memory.start()
            assert memory.settle(60), memory.error
            assert memory._index is None  # no index in the process: the database searches
            vectors = hashed(texts)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            query = "river stone lamp"
            q = hashed([query])[0]
            q /= np.linalg.norm(q)
            for scope, tags, allowed in (
                (Scope("bob"), TagFilter(), [n % 3 == 0 for n in range(300)]),
                (
                    Scope("ann"),
                    TagFilter(any_of=("rare",)),
                    [n % 50 == 0 and n % 3 != 0 for n in range(300)],
                ),
                (Scope(None, True), TagFilter(any_of=("rare",)), [n % 50 == 0 for n in range(300)]),
            ):
                hits = memory.search(SearchQuery(query, k=5, tags=tags, mode="vector"), scope)
                ids = [h.record["id"] for h in hits]
                scores = vectors @ q
                best = sorted((n for n in range(300) if allowed[n]), key=lambda n: (-scores[n], n))[
                    :5
                ]
                found = sorted(round(float(scores[i - 1]), 5) for i in ids)
                wanted = sorted(round(float(scores[n]), 5) for n in best)
                assert all(allowed[i - 1] for i in ids), (scope, tags)
                if exact_below:  # exact: the same scores (ties may come in another order)
                    assert found == wanted, (scope, tags)
                else:  # the index: approximate, but its best is the best
                    assert len(found) == len(wanted) and found[-1] == wanted[-1], (scope, tags)
        finally:
            memory.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            indexes = (
                conn.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE tablename = 'memory_vectors'")
                )
                .scalars()
                .all()
            )
        if any("hnsw" in i for i in indexes):
            break
        time.sleep(0.2)
    assert any("USING hnsw" in i and "vector_cosine_ops" in i for i in indexes), indexes
