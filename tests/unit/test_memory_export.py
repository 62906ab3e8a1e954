"""The embeddings' export without a server: Parquet in row groups and an .npz written to a
stream that cannot seek, both in pieces as they are made, both read back whole, and only the
records the scope sees."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from selftune.memory.export import npz_chunks, parquet_chunks
from selftune.memory.records import NewRecord, Scope, add_records, visible
from selftune.memory.vectors import store_vectors
from selftune.store.db import Database


@pytest.fixture
def stored(db: Database) -> tuple[list[int], np.ndarray]:
    """2,500 records of ann, every third shared, all but the last with a vector of "m"."""
    records = [
        NewRecord("ann", "note", f"note {n}", tags=[f"t{n % 4}"], shared=n % 3 == 0)
        for n in range(2500)
    ]
    vectors = np.random.default_rng(0).standard_normal((2500, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with db.write() as session:
        ids = add_records(session.connection(), records, auto_tags=0)
        store_vectors(session, "m", ids[:-1], vectors[:-1])
    return ids, vectors


def test_parquet_comes_in_row_groups_and_reads_back(
    db: Database, stored: tuple[list[int], np.ndarray]
) -> None:
    ids, vectors = stored
    chunks = list(parquet_chunks(db, [visible(Scope("ann"))], "m", batch=500))
    assert len(chunks) >= 6 and max(map(len, chunks)) < sum(map(len, chunks)) / 3
    data = io.BytesIO(b"".join(chunks))
    assert pq.ParquetFile(data).num_row_groups == 5
    table = pq.read_table(data)
    assert table.column("id").to_pylist() == ids[:-1]
    got = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    assert np.array_equal(got, vectors[:-1])
    assert table.column("tags").to_pylist()[:2] == [["t0"], ["t1"]]
    assert set(table.column("dim").to_pylist()) == {8}


def test_npz_reads_back_with_numpy(db: Database, stored: tuple[list[int], np.ndarray]) -> None:
    ids, vectors = stored
    chunks = list(npz_chunks(db, [visible(Scope("bob"))], "m", batch=300))
    assert len(chunks) > 3
    archive = np.load(io.BytesIO(b"".join(chunks)))
    shared = [n for n in range(2499) if n % 3 == 0]
    assert archive["ids"].dtype == np.int64
    assert archive["ids"].tolist() == [ids[n] for n in shared]
    assert archive["vectors"].dtype == np.float32
    assert np.array_equal(archive["vectors"], vectors[shared])
    lines = archive["metadata.jsonl"].decode().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == len(shared) and first["id"] == ids[0] and first["shared"] is True
    assert first["tags"] == ["t0"] and first["model"] == "m" and first["dim"] == 8


def test_an_export_of_nothing_is_a_valid_empty_file(db: Database) -> None:
    archive = np.load(io.BytesIO(b"".join(npz_chunks(db, [visible(Scope("x"))], "none"))))
    assert archive["ids"].shape == (0,) and archive["vectors"].shape == (0, 0)
    table = pq.read_table(io.BytesIO(b"".join(parquet_chunks(db, [visible(Scope("x"))], "m"))))
    assert table.num_rows == 0
