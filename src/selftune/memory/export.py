"""Bulk export of the memory's embeddings, streamed: the records a scope sees that have a vector
of one embedding model, with the vectors, as Parquet or as a NumPy ``.npz``.

Both are written as they are read, a batch of rows at a time, into a sink whose bytes are
handed on at once, so memory stays flat however many records there are. Everything is read in
one read transaction (on PostgreSQL at ``REPEATABLE READ``), so a file is one consistent
snapshot even while records are written. Records without a vector of the model (just written,
not embedded yet) are left out. Rows come in record id order.

**Parquet** (:func:`parquet_chunks`): one row per record, in row groups of :data:`BATCH` rows,
with the columns ``id`` (int64), ``user``, ``kind``, ``source``, ``title`` (strings),
``tags`` (list of strings, sorted), ``shared`` (bool), ``created_at`` (timestamp, UTC),
``model`` (string), ``dim`` (int32) and ``vector`` (fixed-size list of ``dim`` float32,
normalized).

**NumPy** (:func:`npz_chunks`): a zip, as ``numpy.savez`` writes, of three members, in this
order, rows in the same order in each:

- ``ids.npy``: int64, shape ``(n,)``, the record ids;
- ``vectors.npy``: float32, shape ``(n, dim)``, the vectors;
- ``metadata.jsonl``: one JSON object per record, the Parquet columns but the vector
  (``numpy.load(...)["metadata.jsonl"]`` gives its bytes).

The arrays' headers need their shapes before their rows: ``n`` is counted first, in the same
transaction. The zip is written to a stream that cannot seek (sizes and checksums follow each
member, ZIP64), which ``numpy.load`` and every zip reader read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import zipfile
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from selftune.store.db import Database
from selftune.store.schema import MemoryRecord, MemoryTag, MemoryVector, as_utc

__all__ = [
    "BATCH",
    "FORMATS",
    "MEDIA_TYPES",
    "npz_chunks",
    "parquet_chunks",
    "stored_models",
]

FORMATS = ("parquet", "npz")
MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "npz": "application/zip"}
BATCH = 2000  # rows read, and written as one Parquet row group, at a time


class _Sink:
    """A write-only stream that cannot seek, whose bytes are taken out as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


@dataclasses.dataclass(frozen=True)
class _Rows:
    """One batch of exported rows."""

    ids: list[int]
    records: list[dict[str, Any]]  # the metadata of each, without its vector
    vectors: bytes  # little-endian float32, len(ids) * dim of them


def stored_models(db: Database) -> list[str]:
    """The embedding models that have vectors in the store."""
    with db.read() as session:
        return sorted(session.scalars(select(MemoryVector.model).distinct()))


def _snapshot(session: Session) -> None:
    """Make the session's reads one snapshot: SQLite's read transaction is one already."""
    if session.get_bind().dialect.name != "sqlite":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _joined(model: str) -> Any:
    return and_(MemoryVector.record_id == MemoryRecord.id, MemoryVector.model == model)


def _count(session: Session, where: Sequence[ColumnElement[bool]], model: str) -> int:
    stmt = select(func.count()).select_from(MemoryRecord).join(MemoryVector, _joined(model))
    return int(session.scalar(stmt.where(*where)) or 0)


def _dim(session: Session, model: str) -> int:
    return int(session.scalar(select(MemoryVector.dim).where(MemoryVector.model == model)) or 0)


def _iso(value: dt.datetime) -> str:
    return as_utc(value).isoformat()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _micros(value: dt.datetime) -> int:
    return (as_utc(value) - _EPOCH) // dt.timedelta(microseconds=1)


def _batches(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    model: str,
    dim: int,
    *,
    batch: int,
    columns: str = "all",  # "ids" | "vectors" | "all"
) -> Iterator[_Rows]:
    """The exported rows in id order, at most ``batch`` at a time: keyset pages of the records
    (their primary key's order, whatever the planner thinks of the join), then the vectors of
    each page, in the caller's transaction."""
    wanted: list[Any] = [MemoryRecord.id]
    if columns == "all":
        wanted += [
            MemoryRecord.user_id,
            MemoryRecord.kind,
            MemoryRecord.source,
            MemoryRecord.title,
            MemoryRecord.shared,
            MemoryRecord.created_at,
        ]
    found: Any = MemoryVector.record_id if columns == "ids" else MemoryVector.vector
    after = 0
    while True:
        page = session.execute(
            select(*wanted)
            .where(*where, MemoryRecord.id > after)
            .order_by(MemoryRecord.id)
            .limit(batch)
        ).all()
        if not page:
            return
        after = int(page[-1][0])
        vectors: dict[int, Any] = {
            int(record_id): value
            for record_id, value in session.execute(
                select(MemoryVector.record_id, found).where(
                    MemoryVector.record_id.in_([row[0] for row in page]),
                    MemoryVector.model == model,
                )
            )
        }
        rows = [row for row in page if int(row[0]) in vectors]  # not embedded yet: left out
        if not rows:
            continue
        ids = [int(row[0]) for row in rows]
        blob = b""
        if columns != "ids":
            blobs = [bytes(vectors[i]) for i in ids]
            if any(len(b) != dim * 4 for b in blobs):
                raise ValueError(f"vectors of {model} of more than one dimension in the store")
            blob = b"".join(blobs)
        records: list[dict[str, Any]] = []
        if columns == "all":
            tags: dict[int, list[str]] = {}
            for record_id, tag in session.execute(
                select(MemoryTag.record_id, MemoryTag.tag)
                .where(MemoryTag.record_id.in_(ids))
                .order_by(MemoryTag.record_id, MemoryTag.tag)
            ):
                tags.setdefault(int(record_id), []).append(tag)
            records = [
                {
                    "id": int(row[0]),
                    "user": row[1],
                    "kind": row[2],
                    "source": row[3],
                    "title": row[4],
                    "tags": tags.get(int(row[0]), []),
                    "shared": bool(row[5]),
                    "created_at": as_utc(row[6]),
                    "model": model,
                    "dim": dim,
                }
                for row in rows
            ]
        yield _Rows(ids, records, blob)


def parquet_chunks(
    db: Database, where: Sequence[ColumnElement[bool]], model: str, *, batch: int = BATCH
) -> Generator[bytes, None, None]:
    """The Parquet file of the records ``where`` selects (built from ``visible(scope)``) that
    have a vector of ``model``, in pieces as it is written: a row group per ``batch`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = _Sink()
    with db.read() as session:
        _snapshot(session)
        dim = _dim(session, model)
        vector_type = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
        schema = pa.schema(
            [
                ("id", pa.int64()),
                ("user", pa.string()),
                ("kind", pa.string()),
                ("source", pa.string()),
                ("title", pa.string()),
                ("tags", pa.list_(pa.string())),
                ("shared", pa.bool_()),
                ("created_at", pa.timestamp("us", tz="UTC")),
                ("model", pa.string()),
                ("dim", pa.int32()),
                ("vector", vector_type),
            ],
            metadata={"selftune.model": model, "selftune.dim": str(dim)},
        )
        with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema) as writer:
            yield sink.take()
            for rows in _batches(session, where, model, dim, batch=batch):
                columns: dict[str, Any] = {
                    name: [record[name] for record in rows.records]
                    for name in schema.names
                    if name not in ("vector", "created_at")
                }
                # From integers: pyarrow's conversions of zoned datetimes are avoided (with
                # usearch loaded first, turning them into Python datetimes crashes pyarrow 26).
                micros = [_micros(record["created_at"]) for record in rows.records]
                columns["created_at"] = pa.array(micros, pa.timestamp("us", tz="UTC"))
                values = pa.array(np.frombuffer(rows.vectors, dtype="<f4"), pa.float32())
                vectors = pa.FixedSizeListArray.from_arrays(values, dim)
                table = pa.Table.from_pydict({**columns, "vector": vectors}, schema=schema)
                writer.write_table(table, row_group_size=len(rows.ids))
                yield sink.take()
    yield sink.take()


def _npy_header(member: Any, descr: str, shape: tuple[int, ...]) -> None:
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(member, header)


def npz_chunks(
    db: Database, where: Sequence[ColumnElement[bool]], model: str, *, batch: int = BATCH
) -> Generator[bytes, None, None]:
    """The ``.npz`` of the records ``where`` selects (built from ``visible(scope)``) that have a
    vector of ``model``, in pieces as it is written (see the module's description)."""
    sink = _Sink()
    with db.read() as session:
        _snapshot(session)
        count, dim = _count(session, where, model), _dim(session, model)
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("ids.npy", "w", force_zip64=True) as member:
                _npy_header(member, "<i8", (count,))
                written = 0
                for rows in _batches(session, where, model, dim, batch=batch, columns="ids"):
                    member.write(np.asarray(rows.ids, dtype="<i8").tobytes())
                    written += len(rows.ids)
                    yield sink.take()
                _check(written, count)
            with archive.open("vectors.npy", "w", force_zip64=True) as member:
                _npy_header(member, "<f4", (count, dim))
                written = 0
                for rows in _batches(session, where, model, dim, batch=batch, columns="vectors"):
                    member.write(rows.vectors)
                    written += len(rows.ids)
                    yield sink.take()
                _check(written, count)
            with archive.open("metadata.jsonl", "w", force_zip64=True) as member:
                for rows in _batches(session, where, model, dim, batch=batch):
                    lines = (
                        json.dumps({**record, "created_at": _iso(record["created_at"])}) + "\n"
                        for record in rows.records
                    )
                    member.write("".join(lines).encode())
                    yield sink.take()
    yield sink.take()


def _check(written: int, counted: int) -> None:
    if written != counted:  # a snapshot cannot change; a broken file must not look whole
        raise RuntimeError(f"{written} rows read where {counted} were counted")
