"""Per-user scope as a property: for random users, tags and histories, nothing user A reads
from memory (search in every mode and filter, tag lists, channel records, export) holds user
B's private records. Shared records are everyone's; an admin's scope sees all."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selftune.memory.embedder import CallableEmbedder, TextEmbedder
from selftune.memory.export import npz_chunks, parquet_chunks
from selftune.memory.records import NewRecord, Scope, TagFilter, matching, tag_counts
from selftune.memory.service import Memory, MemoryConfig, SearchQuery
from selftune.memory.summaries import channel_records
from selftune.store.db import Database
from selftune.store.schema import MemoryRecord

USERS = ("ann", "bob", "cyd")
TAGS = ("alpha", "beta", "gamma", "delta")
WORDS = ("river", "stone", "lamp", "orbit", "maple", "signal", "copper", "harbor")
DIM = 16


def hashed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """A bag of hashed words: texts sharing words get close vectors (a stand-in embedder)."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, hashlib.sha256(word.encode()).digest()[0] % DIM] += 1.0
    return out + 1e-3


def embedder(_spec: str) -> TextEmbedder:
    return CallableEmbedder("hashed-words", DIM, hashed, lambda t: len(t.split()), 512)


records = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
        st.lists(st.sampled_from(TAGS), max_size=2),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)
filters = st.builds(
    TagFilter,
    any_of=st.lists(st.sampled_from(TAGS), max_size=2).map(tuple),
    none_of=st.lists(st.sampled_from(TAGS), max_size=1).map(tuple),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=records, reader=st.sampled_from(USERS), tags=filters, query=st.sampled_from(WORDS))
def test_no_read_returns_another_users_private_records(
    tmp_path_factory: object,
    history: list[tuple[str, list[str], list[str], bool]],
    reader: str,
    tags: TagFilter,
    query: str,
) -> None:
    root = Path(tmp_path_factory.mktemp("scope"))  # type: ignore[attr-defined]
    db = Database(f"sqlite:///{root / 'store.db'}")
    db.migrate()
    config = MemoryConfig("hashed-words", root / "memory")
    memory = Memory(db, config, loader=embedder, name_of=lambda spec: spec)
    try:
        memory.write(
            [
                NewRecord(
                    user_id=user, kind="note", text=" ".join(words), tags=tag_list, shared=shared
                )
                for user, words, tag_list, shared in history
            ]
        )
        memory.start()
        assert memory.settle(30)
        with db.read() as session:
            owner = {r.id: (r.user_id, r.shared) for r in session.query(MemoryRecord)}

        def allowed(record_id: int) -> bool:
            user, shared = owner[record_id]
            return shared or user == reader

        mine = Scope(reader)
        for mode in ("hybrid", "keyword", "vector"):
            hits = memory.search(SearchQuery(query, k=50, tags=tags, mode=mode), mine)
            assert all(allowed(hit.record["id"]) for hit in hits), mode
        # Everything the reader may see with the query's word is found by keyword search.
        seen = {
            h.record["id"] for h in memory.search(SearchQuery(query, k=50, mode="keyword"), mine)
        }
        expected = {
            i
            for i, (u, words, _t, shared) in enumerate(history, 1)
            if (shared or u == reader) and query in words
        }
        assert seen == expected
        admin = {
            h.record["id"]
            for h in memory.search(
                SearchQuery(query, k=50, mode="keyword"), Scope(None, everything=True)
            )
        }
        assert admin == {i for i, (_u, words, _t, _s) in enumerate(history, 1) if query in words}
        with db.read() as session:
            visible_tags = dict(tag_counts(session, mine, origins=("user",)))
        expected_tags: dict[str, int] = {}
        for user, _words, tag_list, shared in history:
            if shared or user == reader:
                for tag in dict.fromkeys(tag_list):
                    expected_tags[tag] = expected_tags.get(tag, 0) + 1
        assert visible_tags == expected_tags
        for tag in TAGS:  # what a channel summary of the reader's would cover
            with db.read() as session:
                covered = [r.id for r in channel_records(session, mine, tag)]
            assert all(allowed(record_id) for record_id in covered), tag
        where = matching(mine, TagFilter())
        exported = io.BytesIO(b"".join(npz_chunks(db, where, "hashed-words")))
        with np.load(exported) as arrays:
            ids = [int(i) for i in arrays["ids"]]
        assert sorted(ids) == sorted(i for i in owner if allowed(i))
        table = pq.read_table(io.BytesIO(b"".join(parquet_chunks(db, where, "hashed-words"))))
        assert sorted(table.column("id").to_pylist()) == sorted(ids)
    finally:
        memory.stop()
        db.dispose()
