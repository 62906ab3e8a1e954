"""The usearch vector index that was measured against faiss for the memory and not chosen: a
usearch wheel links libstdc++ statically, and its GNU-unique symbols break llama.cpp in the same
process (after ``import usearch.index`` every GGUF fails to load with ``std::bad_cast``), so the
server uses :mod:`selftune.memory.index` (faiss-cpu). Kept for :mod:`bench.memory_index`, which
measures it as the alternative; it runs in the benchmark's own process, never beside a model.

:class:`VectorIndex` keeps every vector twice: exactly, as a row of an f32 matrix it owns, and
in a usearch HNSW graph (inner product over vectors normalized on the way in, so a score is the
cosine similarity, higher is better) that stores them as i8. A search walks the graph for the
best ``rerank`` rows by its quantized scores and re-scores them exactly from the matrix, so the
scores it returns are exact cosines and i8's rounding costs no recall; :meth:`VectorIndex.exact`
is one gather and one matrix-vector product over the matrix. Keys are the store's int64 record
ids (non-negative). The store is the source of truth: the index file (one file: the matrix, its
rows' record ids and the graph) is a cache that :meth:`VectorIndex.load` refuses with
:class:`IndexFileError` when it is missing, truncated, corrupt, of an older format or of
another dimension, and the caller then rebuilds it from the store.

Filters (tags, users) are applied by the caller as a set of allowed keys:
:meth:`VectorIndex.search_filtered` searches only those exactly when they are few (a rare tag
never loses recall to the graph) and otherwise searches the graph with oversampling and keeps
the allowed hits.

**Parameters** (chosen by ``python -m bench.memory_index --sweep`` on its tuning seed; that
module's docstring has the figures): an i8 graph with connectivity 32 and expansion_add 128,
expansion_search 256, re-ranking the best 100. The previous default, an f32 graph of
connectivity 16 / expansion_add 64, found only 0.85 of the true top 10 at 1,000,000 vectors and
ef 256 (the last report run), and at 100,000 raising ef past 256 barely moved such a graph (f16:
0.978 at ef 256, 0.982 at 1024). An i8 graph of connectivity 32 / expansion_add 128 built as
fast (39 s at 100,000) as an f16 one of 16 / 64 (46 s); its rounding, which alone caps recall@10
near 0.95, is undone by the exact re-rank: 0.987 at 1,000,000 (p95 1.6 ms). Memory, per vector:
1,536 bytes of f32 matrix, about 1,070 of graph (its i8 copy and its links; usearch counted
1,065 MB at 1,000,000) and 16 of ids (the row's record id, and the dense record-id map while ids
are dense). ``DEFAULT_EXACT_BELOW`` (20,000 allowed keys) is what the exact path answers well
within the 20 ms budget on two busy cores (20,000 random keys of 1,000,000: p50 7.7 ms, p95 8.2
ms in the report run; 9.0 and 12.9 ms in a busier one).

**Threads.** usearch's graph is not safe to mutate while it is read: callers hold one lock
exclusively around :meth:`~VectorIndex.add`, :meth:`~VectorIndex.remove`,
:meth:`~VectorIndex.save` and :meth:`~VectorIndex.load`, and at least shared (a readers-writer
lock, or the same lock) around every other method. Searches may run concurrently with each
other. Each call uses one thread for a single query, as a server wants.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from usearch.index import Index, MetricKind

from selftune.atomic import fsync_path

# The same checks of keys and vectors as the server's index, and the same error for a bad file.
from selftune.memory.index import IndexFileError, _keys, _normalized

__all__ = [
    "DEFAULT_CONNECTIVITY",
    "DEFAULT_DTYPE",
    "DEFAULT_EXPANSION_ADD",
    "DEFAULT_EXPANSION_SEARCH",
    "DEFAULT_RERANK",
    "IndexFileError",
    "VectorIndex",
]

# Chosen by bench.memory_index on its tuning seed (its module docstring has the figures).
DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 128
DEFAULT_EXPANSION_SEARCH = 256
DEFAULT_RERANK = 100  # graph candidates re-scored exactly from the f32 matrix
DEFAULT_DTYPE = "i8"  # the graph's copy of the vectors; exact scores come from the f32 matrix
DEFAULT_EXACT_BELOW = 20_000

KeyArray = npt.NDArray[np.int64]
ScoreArray = npt.NDArray[np.float32]
Result = tuple[KeyArray, ScoreArray]


def _unique(keys: KeyArray) -> KeyArray:
    """``keys`` sorted without repeats (at once if they already are, as a store returns ids)."""
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        return np.unique(keys)
    return keys


def _top(
    keys: KeyArray, scores: npt.NDArray[np.floating[Any]], k: int
) -> tuple[KeyArray, npt.NDArray[np.floating[Any]]]:
    """The ``k`` best of ``keys`` by score, best first (ties by smaller key, for determinism)."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        keys, scores = keys[part], scores[part]
    order = np.lexsort((keys, -scores))
    return keys[order], scores[order]


_EMPTY: Result = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))

_CHUNK = 512  # rows gathered and scored at once by exact scoring
_REFINE = 32  # candidates beyond k re-scored in f64 after the f32 pass
_MAGIC = b"STVIDX01"
_HEADER = struct.Struct("<8sIIQQ")  # magic, dim, reserved, rows, graph bytes


class VectorIndex:
    """An HNSW index of ``dim``-dimensional vectors under int64 record ids, scored by cosine.

    Every vector is kept twice: exactly, as a row of an f32 matrix the index owns (record id to
    row by an array while ids are dense, a dict beyond; freed rows are reused), and in a usearch
    graph whose keys are those row numbers and whose copy is stored as ``dtype`` (``"i8"`` by
    default: a quarter of f32's memory and a faster build). A search walks the graph for the
    ``rerank`` best rows (at least ``k``) by the graph's (quantized) scores, then re-scores them
    exactly from the matrix: the scores returned are exact cosines and the order is exact among
    the candidates, so i8's rounding costs no recall. :meth:`exact` reads the matrix directly
    (one gather and one matrix-vector product). Exact scoring sums in f32, then re-scores the
    best ``k + 32`` in f64, so that rounding does not swap near-ties (an f32-only pass lost 1 in
    10,000 at 1M).

    ``connectivity`` (HNSW's M) and ``expansion_add`` (efConstruction) fix the graph's quality
    and build cost; ``expansion_search`` (ef) and ``rerank`` trade query latency for recall and
    may be changed at any time.
    """

    def __init__(
        self,
        dim: int,
        *,
        connectivity: int = DEFAULT_CONNECTIVITY,
        expansion_add: int = DEFAULT_EXPANSION_ADD,
        expansion_search: int = DEFAULT_EXPANSION_SEARCH,
        rerank: int = DEFAULT_RERANK,
        dtype: str = DEFAULT_DTYPE,
        threads: int = 0,
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.threads = threads  # for add and remove; 0 is every core
        self.rerank = rerank
        self._index = Index(
            ndim=dim,
            metric=MetricKind.IP,
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
            multi=False,
        )
        self._matrix: npt.NDArray[np.float32] = np.empty((0, dim), dtype=np.float32)
        self._row_keys: KeyArray = np.empty(0, dtype=np.int64)  # -1: a free row
        # record id -> row: a dense array (-1: absent) for the ids below its length, which grows
        # to cover ids up to a few times the count (store ids are dense), a dict for the others
        self._dense: KeyArray = np.empty(0, dtype=np.int64)
        self._sparse: dict[int, int] = {}
        self._count = 0
        self._free: list[int] = []  # rows freed by remove, reused by add
        self._used = 0  # rows ever used (the matrix's capacity may be larger)

    # --- contents ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int | np.integer):
            return False
        key = int(key)
        if key < len(self._dense):
            return key >= 0 and bool(self._dense[key] >= 0)
        return key in self._sparse

    def _lookup(self, keys: KeyArray) -> KeyArray:
        """The row of each of ``keys`` (non-negative), -1 for an absent one."""
        low = keys < len(self._dense)
        if low.all():
            return self._dense[keys]
        rows = np.full(len(keys), -1, dtype=np.int64)
        rows[low] = self._dense[keys[low]]
        if self._sparse:
            get = self._sparse.get
            rows[~low] = [get(key, -1) for key in keys[~low].tolist()]
        return rows

    def _assign(self, keys: KeyArray, rows: KeyArray) -> None:
        """Record that ``keys`` (absent until now) are at ``rows``."""
        if not len(keys):
            return
        bound = max(len(self._dense), 4 * (self._count + len(keys)) + 65_536)
        low = keys < bound
        if low.any():
            need = int(keys[low].max()) + 1
            if need > len(self._dense):
                dense = np.full(max(need, min(2 * len(self._dense), bound)), -1, dtype=np.int64)
                dense[: len(self._dense)] = self._dense
                for key in [key for key in self._sparse if key < len(dense)]:
                    dense[key] = self._sparse.pop(key)
                self._dense = dense
            self._dense[keys[low]] = rows[low]
        if not low.all():
            self._sparse.update(zip(keys[~low].tolist(), rows[~low].tolist(), strict=True))
        self._count += len(keys)

    def _grow(self, rows: int) -> None:
        if rows <= len(self._matrix):
            return
        capacity = max(rows, 2 * len(self._matrix), 1024)
        matrix = np.empty((capacity, self.dim), dtype=np.float32)  # untouched pages cost nothing
        matrix[: self._used] = self._matrix[: self._used]
        row_keys = np.full(capacity, -1, dtype=np.int64)
        row_keys[: self._used] = self._row_keys[: self._used]
        self._matrix, self._row_keys = matrix, row_keys

    def add(self, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add vectors under ``keys``, replacing the vector of a key already present (it keeps
        its row). Of a key given twice in one call, the last vector wins."""
        key_array = _keys(keys)
        matrix = _normalized(vectors, self.dim)
        if len(key_array) != len(matrix):
            raise ValueError(f"{len(key_array)} keys for {len(matrix)} vectors")
        if not len(key_array):
            return
        # the last occurrence of each key: unique over the reversed array
        _, first_reversed = np.unique(key_array[::-1], return_index=True)
        if len(first_reversed) != len(key_array):
            keep = np.sort(len(key_array) - 1 - first_reversed)
            key_array, matrix = key_array[keep], matrix[keep]
        rows = self._lookup(key_array)
        new = rows < 0
        replaced = rows[~new]
        reuse = min(int(new.sum()), len(self._free))
        fresh = int(new.sum()) - reuse
        taken = self._free[len(self._free) - reuse :]
        del self._free[len(self._free) - reuse :]
        rows[new] = np.concatenate(
            [np.asarray(taken, dtype=np.int64), np.arange(self._used, self._used + fresh)]
        )
        self._grow(self._used + fresh)
        if len(replaced):
            self._index.remove(replaced, threads=self.threads)
        self._used += fresh
        self._matrix[rows] = matrix
        self._row_keys[rows] = key_array
        self._assign(key_array[new], rows[new])
        self._index.add(rows, matrix, threads=self.threads)

    def remove(self, keys: npt.ArrayLike) -> None:
        """Remove ``keys``; absent ones are ignored. Their rows are freed for later adds."""
        key_array = np.unique(_keys(keys))
        rows = self._lookup(key_array)
        present = rows >= 0
        if not present.any():
            return
        key_array, rows = key_array[present], rows[present]
        low = key_array < len(self._dense)
        self._dense[key_array[low]] = -1
        for key in key_array[~low].tolist():
            del self._sparse[key]
        self._count -= len(key_array)
        self._index.remove(rows, threads=self.threads)
        self._row_keys[rows] = -1
        self._free.extend(rows.tolist())

    def memory_bytes(self) -> int:
        """Bytes of the graph (usearch's arenas, so rounded up), of the rows in use of the f32
        matrix with their record ids, and of the record-id map's dense part."""
        return int(self._index.memory_usage) + self._used * (self.dim * 4 + 8) + self._dense.nbytes

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._index.expansion_search = value  # type: ignore[misc]  # usearch's setter

    # --- search --------------------------------------------------------------------------------

    def _scored(self, query: npt.NDArray[np.float32], rows: KeyArray, k: int) -> Result:
        """The ``k`` best of ``rows`` by exact cosine with ``query``. Gathered and scored in
        chunks that stay in cache, by einsum rather than BLAS: a multi-threaded BLAS
        matrix-vector product is 4x slower than one thread when the cores are busy."""
        scores = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), _CHUNK):
            part = self._matrix[rows[start : start + _CHUNK]]
            np.einsum("ij,j->i", part, query, out=scores[start : start + _CHUNK])
        # einsum sums in f32 one term after another (error near 1e-6, against BLAS's 1e-7),
        # enough to swap near-ties: the finalists are re-scored in f64 and ordered by that
        if len(rows) > k + _REFINE:
            rows = rows[np.argpartition(-scores, k + _REFINE - 1)[: k + _REFINE]]
        finalists = self._matrix[rows].astype(np.float64)
        precise = np.einsum("ij,j->i", finalists, query.astype(np.float64))
        keys, best = _top(self._row_keys[rows], precise, k)
        return keys, best.astype(np.float32)

    def search(self, query: npt.ArrayLike, k: int) -> Result:
        """The approximate ``k`` nearest keys to ``query`` and their exact cosines, best first:
        the graph's best ``max(k, rerank)`` re-scored from the f32 matrix."""
        if k <= 0 or not self._count:
            return _EMPTY
        q = _normalized(query, self.dim)[0]
        matches = self._index.search(q, max(k, self.rerank), threads=1)
        rows = np.asarray(matches.keys).astype(np.int64)
        return self._scored(q, rows, k)

    def exact(self, query: npt.ArrayLike, keys: npt.ArrayLike, k: int) -> Result:
        """The exact ``k`` nearest among ``keys`` (absent ones skipped), by brute force over the
        f32 matrix, best first: recall 1.0 whatever the graph would have found."""
        if k <= 0:
            return _EMPTY
        key_array = _keys(keys)
        key_array = _unique(key_array)
        rows = self._lookup(key_array)
        rows = rows[rows >= 0]
        if not len(rows):
            return _EMPTY
        q = _normalized(query, self.dim)[0]
        return self._scored(q, rows, k)

    def search_filtered(
        self,
        query: npt.ArrayLike,
        k: int,
        allowed: npt.ArrayLike,
        *,
        exact_below: int = DEFAULT_EXACT_BELOW,
    ) -> Result:
        """The ``k`` nearest among the ``allowed`` keys, best first.

        Up to ``exact_below`` allowed keys: :meth:`exact` over them. More: the graph is searched
        for ``2 * k / selectivity`` hits, doubled until ``k`` allowed ones are among them; if the
        whole index was fetched and still too few were allowed, :meth:`exact` over them.
        """
        allowed_keys = _unique(_keys(allowed))
        total = self._count
        if k <= 0 or not len(allowed_keys) or not total:
            return _EMPTY
        if len(allowed_keys) <= exact_below:
            return self.exact(query, allowed_keys, k)
        fetch = min(total, max(2 * k, int(np.ceil(2 * k * total / len(allowed_keys)))))
        while True:
            keys, scores = self.search(query, fetch)
            mask = np.isin(keys, allowed_keys, assume_unique=True)
            if int(mask.sum()) >= k:
                return keys[mask][:k], scores[mask][:k]
            if fetch >= total:
                return self.exact(query, allowed_keys, k)
            fetch = min(total, fetch * 2)

    # --- files ---------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically: a temporary file in the same folder, fsynced,
        renamed over ``path``, and the folder fsynced, so a crash leaves the old file or the new
        one, never a torn one. One file holds both parts: a header, the rows' record ids, the f32
        matrix, then the usearch graph (as usearch saves it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        tmp = path.with_name(f".{path.name}.{tag}.tmp")
        graph = path.with_name(f".{path.name}.{tag}.graph.tmp")
        try:
            self._index.save(graph)
            used = self._used
            with open(tmp, "wb") as out:
                out.write(_HEADER.pack(_MAGIC, self.dim, 0, used, graph.stat().st_size))
                out.write(np.ascontiguousarray(self._row_keys[:used]).data.cast("B"))
                out.write(np.ascontiguousarray(self._matrix[:used]).data.cast("B"))
                with open(graph, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_path(path.parent)
        finally:
            for leftover in (tmp, graph):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    @classmethod
    def load(
        cls,
        path: Path,
        dim: int,
        *,
        expansion_search: int = DEFAULT_EXPANSION_SEARCH,
        rerank: int = DEFAULT_RERANK,
        threads: int = 0,
    ) -> VectorIndex:
        """Read an index that :meth:`save` wrote. Raises :class:`IndexFileError` if the file is
        missing, unreadable, truncated, of an older format or of another dimension or metric:
        the caller rebuilds it from the store. The graph's connectivity and storage type come
        from the file."""

        def refuse(why: str) -> IndexFileError:
            return IndexFileError(f"vector index {path} {why}; it will be rebuilt from the store")

        if not path.is_file():
            raise refuse("is missing")
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < _HEADER.size:
                    raise refuse("is too short")
                magic, file_dim, _, used, graph_bytes = _HEADER.unpack(fh.read(_HEADER.size))
                if magic != _MAGIC:
                    raise refuse("is not a selftune vector index (an older format?)")
                if file_dim != dim:
                    raise refuse(f"has dimension {file_dim}, not {dim}")
                graph_at = _HEADER.size + used * (8 + 4 * dim)
                if size != graph_at + graph_bytes:
                    raise refuse(f"has {size} bytes, not {graph_at + graph_bytes} (truncated?)")
                row_keys = np.fromfile(fh, dtype=np.int64, count=used)
                matrix = np.fromfile(fh, dtype=np.float32, count=used * dim).reshape(used, dim)
                graph = fh.read(graph_bytes)
        except OSError as exc:
            raise refuse(f"is unreadable ({exc})") from exc
        try:
            meta = Index.metadata(graph)
        except Exception as exc:  # usearch raises ValueError or RuntimeError
            raise refuse(f"holds no usearch graph ({exc})") from exc
        if not meta:
            raise refuse("holds no usearch graph")
        if meta.get("dimensions") != dim:
            raise refuse(f"holds a graph of dimension {meta.get('dimensions')}, not {dim}")
        if meta.get("kind_metric") != MetricKind.IP:
            raise refuse(f"uses metric {meta.get('kind_metric')}, not inner product")
        index = cls(dim, expansion_search=expansion_search, rerank=rerank, threads=threads)
        try:
            index._index.load(graph)  # takes connectivity and storage type from the file
        except Exception as exc:
            raise refuse(f"is corrupt ({exc})") from exc
        del graph
        if index._index.ndim != dim or index._index.multi:
            raise refuse(f"holds dimension {index._index.ndim}, not {dim}")
        live = np.flatnonzero(row_keys >= 0)
        if len(index._index) != len(live) or not np.all(index._index.contains(live)):
            raise refuse("has a graph that does not match its rows")
        index._index.expansion_search = expansion_search  # type: ignore[misc]  # as above
        index._matrix, index._row_keys, index._used = matrix, row_keys, used
        if len(np.unique(row_keys[live])) != len(live):
            raise refuse("holds a record id twice")
        index._assign(row_keys[live], live)
        index._free = np.flatnonzero(row_keys < 0).tolist()
        return index
