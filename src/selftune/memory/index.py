"""The memory's embedded vector index on faiss-cpu: record ids to L2-normalized vectors, found by
cosine.

Chosen over usearch, which met the same targets (``bench/usearch_index.py``,
``python -m bench.memory_index``) but cannot share a process with llama.cpp: usearch's wheel
links libstdc++ statically and its GNU-unique symbols make every GGUF fail to load with
``std::bad_cast``. faiss-cpu loads beside llama.cpp (``tests/unit/test_memory_index.py``).

**Structure.** One faiss ``IndexIVFFlat`` (inner product over vectors normalized on the way in,
so a score is the exact cosine, higher is better) whose ids are the store's record ids
(non-negative int64), with a hash-table direct map so that vectors can be removed and read back
by id. It has two states:

* *flat*, up to ``flat_below`` vectors (50,000): a single inverted list, so every search scans
  every vector: exact; 1.7 ms a query at 20,000 on one core, linear in N. (An IVF with one
  list, not ``IndexIDMap2(IndexFlatIP)``: one code path for both states, and a removal is a
  swap with the list's last vector, where ``IndexFlat`` shifts every vector after it.)
* *IVF*, above it: ``nlist = 4 * sqrt(N)`` lists (N the size when it was trained), their
  centroids found by spherical k-means (10 iterations) on a sample of at most 40 vectors a list;
  a search scans the ``nprobe`` lists nearest the query.

**Growth policy.** :meth:`VectorIndex.add` turns the flat index into an IVF when it passes
``flat_below`` vectors, and rebuilds the IVF (new centroids for the current vectors, every
vector re-assigned) when it holds more than ``rebuild_growth`` (4) times the vectors it was
trained on: lists four times longer than planned make a search about four times slower. It turns
an IVF back into a flat index when removals leave fewer than ``flat_below / 2``. A rebuild runs
on the caller's thread inside :meth:`~VectorIndex.add`, with up to ``threads`` cores, and the
caller's lock is held meanwhile (see *Threads*): at 1,000,000 vectors on two cores it takes
about as long as building the index from scratch (the benchmark's build time). Growing from
empty to N by adds costs about 1.33 builds of N in all (rebuilds at 4x steps); the server adds
from its background thread, so a rebuild delays searches only while it holds the lock.
Between rebuilds new vectors join the lists of their nearest centroids, which serves them as
well as the vectors trained on while the distribution does not drift.

**Filters** (tags, users) are applied by the caller as a set of allowed keys:
:meth:`VectorIndex.search_filtered` searches only those, exactly, when they are few (a rare tag
never loses recall to the approximation; :meth:`VectorIndex.exact` reads the vectors back by id
in blocks and scores each block with faiss's SIMD inner products), and otherwise searches the IVF
with oversampling and keeps the allowed hits.

**Parameters** (chosen by ``python -m bench.memory_index_faiss --sweep`` on the tuning seed of
:mod:`bench.memory_index`; that module's docstring has the figures): see the ``DEFAULT_*``
constants below.

**Threads.** faiss's index is not safe to mutate while it is read: callers hold one lock
exclusively around :meth:`~VectorIndex.add`, :meth:`~VectorIndex.remove`,
:meth:`~VectorIndex.save` and :meth:`~VectorIndex.load`, and at least shared around every other
method; searches may run concurrently with each other. A search or :meth:`~VectorIndex.exact`
uses one thread. Builds and adds use ``threads`` cores (0: all of them) through OpenMP, set with
``faiss.omp_set_num_threads`` around the call and restored after it. That setting is OpenMP's
``nthreads-var``, which faiss's bundled libgomp keeps per calling thread (a thread that never set
it gets the process default), so it does not leak into other threads' searches; it is still
restored, so that other OpenMP code later run on the same thread is unaffected.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from selftune.atomic import fsync_path

# faiss's bundled type hints miss much of its SWIG API (DirectMap, the IO callbacks, the kwargs
# of SearchParametersIVF): typed as Any here, and precise at this module's boundary instead
faiss: Any = _faiss

__all__ = [
    "DEFAULT_EXACT_BELOW",
    "DEFAULT_FLAT_BELOW",
    "DEFAULT_LISTS_PER_SQRT",
    "DEFAULT_NPROBE",
    "DEFAULT_REBUILD_GROWTH",
    "IndexFileError",
    "VectorIndex",
]

# Chosen by bench.memory_index_faiss on bench.memory_index's tuning seed (see its docstring).
DEFAULT_FLAT_BELOW = 50_000  # an exact scan up to this many vectors, an IVF above
DEFAULT_LISTS_PER_SQRT = 4.0  # nlist = 4 * sqrt(vectors when trained)
DEFAULT_NPROBE = 32  # lists a search scans
DEFAULT_REBUILD_GROWTH = 4.0  # rebuild the IVF once it holds this many times its trained size
DEFAULT_EXACT_BELOW = 10_000  # allowed keys that search_filtered answers exactly
TRAIN_PER_LIST = 40  # k-means sample: vectors a list (faiss warns below 39)
TRAIN_ITERATIONS = 10
_EXACT_BLOCK = 2048  # vectors read back per block in exact(): 3 MB at 384-d, cache-sized

KeyArray = npt.NDArray[np.int64]
ScoreArray = npt.NDArray[np.float32]
Result = tuple[KeyArray, ScoreArray]


class IndexFileError(RuntimeError):
    """The index file is missing, corrupt or of another dimension; rebuild it from the store."""


def _keys(keys: Any) -> KeyArray:
    array = np.ascontiguousarray(np.asarray(keys, dtype=np.int64).reshape(-1))
    if array.size and int(array.min()) < 0:
        raise ValueError("record ids must be non-negative")
    return array


def _normalized(vectors: Any, dim: int) -> npt.NDArray[np.float32]:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("vectors must be finite and non-zero")
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


def _top(keys: KeyArray, scores: ScoreArray, k: int) -> Result:
    """The ``k`` best of ``keys`` by score, best first (ties by smaller key, for determinism)."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        keys, scores = keys[part], scores[part]
    order = np.lexsort((keys, -scores))
    return keys[order], scores[order]


_EMPTY: Result = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


@contextlib.contextmanager
def _omp_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` OpenMP threads (0: every core) on this thread, then put
    back what was set before (libgomp keeps the setting per calling thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class _KeySet:
    """Which record ids are present, tested many at a time: a byte per id for the ids below a
    bound that grows with the count (store ids are dense), a set for the others."""

    def __init__(self) -> None:
        self.dense = np.zeros(0, dtype=np.bool_)
        self.sparse: set[int] = set()
        self.count = 0

    def contains(self, keys: KeyArray) -> npt.NDArray[np.bool_]:
        low = keys < len(self.dense)
        if low.all():
            return self.dense[keys]
        out = np.zeros(len(keys), dtype=np.bool_)
        out[low] = self.dense[keys[low]]
        if self.sparse:
            out[~low] = [key in self.sparse for key in keys[~low].tolist()]
        return out

    def add(self, keys: KeyArray) -> None:
        """Add ``keys``, distinct and absent until now."""
        if not len(keys):
            return
        bound = max(len(self.dense), 4 * (self.count + len(keys)) + 65_536)
        low = keys < bound
        if low.any():
            need = int(keys[low].max()) + 1
            if need > len(self.dense):
                dense = np.zeros(max(need, min(2 * len(self.dense), bound)), dtype=np.bool_)
                dense[: len(self.dense)] = self.dense
                for key in [key for key in self.sparse if key < len(dense)]:
                    dense[key] = True
                    self.sparse.discard(key)
                self.dense = dense
            self.dense[keys[low]] = True
        if not low.all():
            self.sparse.update(keys[~low].tolist())
        self.count += len(keys)

    def discard(self, keys: KeyArray) -> None:
        """Remove ``keys``, distinct and present."""
        low = keys < len(self.dense)
        self.dense[keys[low]] = False
        self.sparse.difference_update(keys[~low].tolist())
        self.count -= len(keys)

    @property
    def nbytes(self) -> int:
        return int(self.dense.nbytes) + 100 * len(self.sparse)


def _lists_for(n: int, lists_per_sqrt: float) -> int:
    return max(1, round(lists_per_sqrt * math.sqrt(n)))


_MAGIC = b"STFAISS1"
_HEADER = struct.Struct("<8sIIQQ")  # magic, crc32 of the rest, metadata bytes, faiss bytes, rows


class VectorIndex:
    """A faiss IVF index of ``dim``-dimensional vectors under int64 record ids, scored by cosine.

    Flat (one list: every search exact) up to ``flat_below`` vectors, an IVF of
    ``lists_per_sqrt * sqrt(N)`` lists above, rebuilt when it has grown ``rebuild_growth``-fold
    since it was trained (the module docstring has the policy). ``nprobe``, the lists a search
    scans, trades latency for recall and may be changed at any time. ``threads`` is the cores
    builds and adds use (0: all); searches use one.
    """

    def __init__(
        self,
        dim: int,
        *,
        flat_below: int = DEFAULT_FLAT_BELOW,
        nprobe: int = DEFAULT_NPROBE,
        lists_per_sqrt: float = DEFAULT_LISTS_PER_SQRT,
        rebuild_growth: float = DEFAULT_REBUILD_GROWTH,
        threads: int = 0,
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        if flat_below < 1 or nprobe < 1 or lists_per_sqrt <= 0 or rebuild_growth <= 1:
            raise ValueError("flat_below, nprobe, lists_per_sqrt must be positive, growth > 1")
        self.dim = dim
        self.threads = threads  # for add and remove; 0 is every core
        self.nprobe = nprobe
        self.flat_below = flat_below
        self.lists_per_sqrt = lists_per_sqrt
        self.rebuild_growth = rebuild_growth
        self._trained = 0  # vectors the IVF's centroids were trained on; 0 when flat
        self._present = _KeySet()
        self._index: Any = self._flat()
        self._buffer = np.empty((0, dim), dtype=np.float32)  # exact()'s block, reused

    # --- the faiss index -----------------------------------------------------------------------

    def _flat(self) -> Any:
        """An empty IVF with one list: a search scans every vector."""
        quantizer = faiss.IndexFlatIP(self.dim)
        quantizer.add(np.zeros((1, self.dim), dtype=np.float32))  # trained: nlist centroids
        index = faiss.IndexIVFFlat(quantizer, self.dim, 1, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the IVF frees its quantizer
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index

    def _ivf(self, sample: npt.NDArray[np.float32], size: int) -> Any:
        """An empty IVF for ``size`` vectors, its centroids trained on ``sample``."""
        nlist = min(_lists_for(size, self.lists_per_sqrt), len(sample))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        index.cp.niter = TRAIN_ITERATIONS
        index.cp.max_points_per_centroid = TRAIN_PER_LIST
        index.cp.min_points_per_centroid = 1  # a small sample is expected, not worth a warning
        index.cp.seed = 1234
        index.cp.spherical = True  # centroids on the sphere, for inner product
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index

    def _contents(self, vectors_too: bool = True) -> tuple[KeyArray, npt.NDArray[np.float32]]:
        """Every record id of the index and (if ``vectors_too``) its vector, list by list."""
        invlists = self._index.invlists
        total = int(self._index.ntotal)
        keys = np.empty(total, dtype=np.int64)
        vectors = np.empty((total if vectors_too else 0, self.dim), dtype=np.float32)
        at = 0
        for number in range(invlists.nlist):
            size = int(invlists.list_size(number))
            if not size:
                continue
            keys[at : at + size] = faiss.rev_swig_ptr(invlists.get_ids(number), size)
            if vectors_too:
                codes = faiss.rev_swig_ptr(invlists.get_codes(number), size * self.dim * 4)
                vectors[at : at + size] = codes.view(np.float32).reshape(size, self.dim)
            at += size
        assert at == total
        return keys, vectors

    def _restructure(self, extra_keys: KeyArray, extra: npt.NDArray[np.float32]) -> None:
        """Rebuild the index for its vectors plus ``extra`` (absent keys): flat below
        ``flat_below``, else an IVF trained on a sample of all of them."""
        keys, vectors = self._contents()
        if len(extra_keys):
            keys = np.concatenate([keys, extra_keys])
            vectors = np.concatenate([vectors, extra])
        # The old index is freed before the new one is filled (searches wait: the caller holds
        # the lock), so a rebuild needs the memory of two copies of the vectors, not three.
        self._index = self._flat()
        self._trained = 0
        try:
            total = len(keys)
            if total <= self.flat_below:
                index, trained = self._flat(), 0
            else:
                nlist = _lists_for(total, self.lists_per_sqrt)
                want = min(total, nlist * TRAIN_PER_LIST)
                pick = np.random.default_rng(total).choice(total, want, replace=False)
                index, trained = self._ivf(vectors[np.sort(pick)], total), total
            for start in range(0, total, 65_536):  # bounds faiss's temporary assignment arrays
                index.add_with_ids(vectors[start : start + 65_536], keys[start : start + 65_536])
        except BaseException:
            self._present = _KeySet()  # empty but consistent: the caller rebuilds from the store
            raise
        self._index, self._trained = index, trained

    # --- contents ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._present.count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int | np.integer) or int(key) < 0:
            return False
        return bool(self._present.contains(np.array([int(key)], dtype=np.int64))[0])

    @property
    def nlist(self) -> int:
        """The index's lists: 1 while it is flat."""
        return int(self._index.nlist)

    def add(self, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add vectors under ``keys``, replacing the vector of a key already present. Of a key
        given twice in one call, the last vector wins. May turn the index into an IVF or rebuild
        it (the module docstring has the policy)."""
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
        with _omp_threads(self.threads):
            present = self._present.contains(key_array)
            if present.any():
                replaced = key_array[present]
                self._remove_present(replaced)
            total = len(self) + len(key_array)
            if (self._trained == 0 and total > self.flat_below) or (
                self._trained and total > self.rebuild_growth * self._trained
            ):
                self._restructure(key_array, matrix)
            else:
                self._index.add_with_ids(matrix, key_array)
            self._present.add(key_array)

    def _remove_present(self, keys: KeyArray) -> None:
        selector = faiss.IDSelectorArray(len(keys), faiss.swig_ptr(keys))
        removed = int(self._index.remove_ids(selector))
        if removed != len(keys):
            raise RuntimeError(f"faiss removed {removed} of {len(keys)} vectors")
        self._present.discard(keys)

    def remove(self, keys: npt.ArrayLike) -> None:
        """Remove ``keys``; absent ones are ignored. An IVF left with fewer than half of
        ``flat_below`` vectors becomes flat again."""
        key_array = np.unique(_keys(keys))
        key_array = np.ascontiguousarray(key_array[self._present.contains(key_array)])
        if not len(key_array):
            return
        with _omp_threads(self.threads):
            self._remove_present(key_array)
            if self._trained and len(self) < self.flat_below // 2:
                self._restructure(_EMPTY[0], np.empty((0, self.dim), dtype=np.float32))

    def memory_bytes(self) -> int:
        """Bytes of the vectors and their ids in the lists, the centroids, the direct map (an
        estimated 40 bytes an entry) and the key set; the lists' spare capacity is not
        counted."""
        rows = int(self._index.ntotal)
        return rows * (self.dim * 4 + 8 + 40) + self.nlist * self.dim * 4 + self._present.nbytes

    # --- search --------------------------------------------------------------------------------

    def search(self, query: npt.ArrayLike, k: int) -> Result:
        """The approximate ``k`` nearest keys to ``query`` and their (exact) cosines, best
        first: the best of the ``nprobe`` lists nearest the query. Returns ``min(k, len(self))``
        keys: where those lists hold fewer, more lists are scanned (all of them at worst)."""
        total = len(self)
        if k <= 0 or not total:
            return _EMPTY
        q = _normalized(query, self.dim)
        want = min(k, total)
        nlist = self.nlist
        nprobe = min(self.nprobe, nlist)
        with _omp_threads(1):
            while True:
                params = faiss.SearchParametersIVF(nprobe=nprobe)
                scores, keys = self._index.search(q, want, params=params)
                found = keys[0] >= 0
                if found.all() or nprobe >= nlist:
                    break
                nprobe = min(nlist, nprobe * 4)
        return keys[0][found].astype(np.int64), scores[0][found].astype(np.float32)

    def exact(self, query: npt.ArrayLike, keys: npt.ArrayLike, k: int) -> Result:
        """The exact ``k`` nearest among ``keys`` (absent ones skipped), best first: recall 1.0.
        The vectors are read back by id (``reconstruct_batch``) in blocks of 2,048, each scored
        by one matrix-vector product (faiss's single-threaded SIMD loop)."""
        if k <= 0:
            return _EMPTY
        key_array = _keys(keys)
        if len(key_array) > 1 and not bool(np.all(key_array[1:] > key_array[:-1])):
            key_array = np.unique(key_array)
        key_array = np.ascontiguousarray(key_array[self._present.contains(key_array)])
        if not len(key_array):
            return _EMPTY
        q = _normalized(query, self.dim)[0]
        qp = faiss.swig_ptr(q)
        block = min(len(key_array), _EXACT_BLOCK)
        buffer = self._buffer
        if len(buffer) < block:
            buffer = np.empty((block, self.dim), dtype=np.float32)
            if block == _EXACT_BLOCK:
                self._buffer = buffer  # racing searches may each make one; any of them is kept
        scores = np.empty(len(key_array), dtype=np.float32)
        with _omp_threads(1):
            for start in range(0, len(key_array), block):
                part = key_array[start : start + block]
                out = buffer[: len(part)]
                self._index.reconstruct_batch(part, out)
                # faiss's single-threaded SIMD loop: numpy's matmul goes through OpenBLAS,
                # whose threads made a 2,048-row product take 10 ms instead of 0.05 on two
                # busy cores
                faiss.fvec_inner_products_ny(
                    faiss.swig_ptr(scores[start:]), qp, faiss.swig_ptr(out), self.dim, len(part)
                )
        return _top(key_array, scores, k)

    def search_filtered(
        self,
        query: npt.ArrayLike,
        k: int,
        allowed: npt.ArrayLike,
        *,
        exact_below: int = DEFAULT_EXACT_BELOW,
    ) -> Result:
        """The ``k`` nearest among the ``allowed`` keys, best first.

        Up to ``exact_below`` allowed keys: :meth:`exact` over them. More: the index is searched
        for ``2 * k / selectivity`` hits, doubled until ``k`` allowed ones are among them; if the
        whole index was fetched and still too few were allowed, :meth:`exact` over them.
        """
        allowed_keys = _keys(allowed)
        if len(allowed_keys) > 1 and not bool(np.all(allowed_keys[1:] > allowed_keys[:-1])):
            allowed_keys = np.unique(allowed_keys)  # sorted and distinct, as searchsorted needs
        total = len(self)
        if k <= 0 or not len(allowed_keys) or not total:
            return _EMPTY
        if len(allowed_keys) <= exact_below:
            return self.exact(query, allowed_keys, k)
        fetch = min(total, max(2 * k, int(np.ceil(2 * k * total / len(allowed_keys)))))
        while True:
            keys, scores = self.search(query, fetch)
            at = np.minimum(np.searchsorted(allowed_keys, keys), len(allowed_keys) - 1)
            mask = allowed_keys[at] == keys  # O(fetch log allowed): np.isin sorts them all
            if int(mask.sum()) >= k:
                return keys[mask][:k], scores[mask][:k]
            if fetch >= total:
                return self.exact(query, allowed_keys, k)
            fetch = min(total, fetch * 2)

    # --- files ---------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically: a temporary file in the same folder, fsynced,
        renamed over ``path``, and the folder fsynced, so a crash leaves the old file or the new
        one, never a torn one. The file is a header (with a CRC-32 of the rest), a little JSON
        (dimension, lists, trained size) and the index as ``faiss.write_index`` writes it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        meta = json.dumps(
            {"dim": self.dim, "nlist": self.nlist, "trained": self._trained, "rows": len(self)}
        ).encode()
        try:
            with open(tmp, "wb") as out:
                out.write(b"\0" * _HEADER.size)
                out.write(meta)
                crc = zlib.crc32(meta)
                written = 0

                def write(chunk: bytes) -> int:
                    nonlocal crc, written
                    crc = zlib.crc32(chunk, crc)
                    written += len(chunk)
                    return out.write(chunk)

                faiss.write_index(self._index, faiss.PyCallbackIOWriter(write, 1 << 20))
                out.seek(0)
                out.write(_HEADER.pack(_MAGIC, crc, len(meta), written, len(self)))
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_path(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @classmethod
    def load(
        cls,
        path: Path,
        dim: int,
        *,
        nprobe: int = DEFAULT_NPROBE,
        threads: int = 0,
        **options: Any,
    ) -> VectorIndex:
        """Read an index that :meth:`save` wrote. Raises :class:`IndexFileError` if the file is
        missing, unreadable, truncated, corrupt (its CRC-32 does not match), of another format
        or of another dimension: the caller rebuilds it from the store. ``options`` are the
        constructor's other keywords (``flat_below``, ``lists_per_sqrt``, ``rebuild_growth``)."""

        def refuse(why: str) -> IndexFileError:
            return IndexFileError(f"vector index {path} {why}; it will be rebuilt from the store")

        if not path.is_file():
            raise refuse("is missing")
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < _HEADER.size:
                    raise refuse("is too short")
                magic, crc, meta_bytes, faiss_bytes, rows = _HEADER.unpack(fh.read(_HEADER.size))
                if magic != _MAGIC:
                    raise refuse("is not a selftune faiss vector index (another format?)")
                if size != _HEADER.size + meta_bytes + faiss_bytes:
                    expected = _HEADER.size + meta_bytes + faiss_bytes
                    raise refuse(f"has {size} bytes, not {expected} (truncated?)")
                check = 0
                for block in iter(lambda: fh.read(1 << 22), b""):
                    check = zlib.crc32(block, check)
                if check != crc:
                    raise refuse("is corrupt (its checksum does not match)")
                fh.seek(_HEADER.size)
                try:
                    meta = json.loads(fh.read(meta_bytes))
                    file_dim, trained = int(meta["dim"]), int(meta["trained"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise refuse(f"has a corrupt description ({exc})") from exc
                if file_dim != dim:
                    raise refuse(f"has dimension {file_dim}, not {dim}")
                try:
                    read = faiss.read_index(faiss.PyCallbackIOReader(fh.read, 1 << 20))
                except RuntimeError as exc:
                    raise refuse(f"is corrupt ({str(exc).splitlines()[0]})") from exc
        except OSError as exc:
            raise refuse(f"is unreadable ({exc})") from exc
        index = cls(dim, nprobe=nprobe, threads=threads, **options)
        faiss_index = read  # read_index returns the index as its own class, owning it
        if not isinstance(faiss_index, faiss.IndexIVFFlat):
            raise refuse(f"holds a {type(faiss_index).__name__}, not an IndexIVFFlat")
        if faiss_index.d != dim or faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise refuse(f"holds an index of dimension {faiss_index.d} or another metric")
        if faiss_index.direct_map.type != faiss.DirectMap.Hashtable:
            raise refuse("holds an index without a direct map")
        if int(faiss_index.ntotal) != rows or (trained == 0) != (faiss_index.nlist == 1):
            raise refuse("does not match its description")
        index._index, index._trained = faiss_index, trained
        keys, _ = index._contents(vectors_too=False)
        if len(keys) and int(keys.min()) < 0:
            raise refuse("holds a negative record id")
        unique = np.unique(keys)
        if len(unique) != len(keys):
            raise refuse("holds a record id twice")
        index._present.add(unique)
        return index
