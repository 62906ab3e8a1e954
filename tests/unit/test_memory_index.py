"""The memory's faiss vector index (selftune.memory.index): exact and approximate search,
filters, replacement, removal, the flat-to-IVF growth, its file, and llama.cpp beside it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from selftune.memory.index import IndexFileError, VectorIndex

DIM = 32


def _unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, DIM)))
    return _unit(centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, DIM)))


def _brute(vectors: np.ndarray, keys: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors[keys] @ _unit(query)
    return keys[np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _clustered(2000)


@pytest.fixture
def index(vectors: np.ndarray) -> VectorIndex:
    index = VectorIndex(DIM)
    index.add(np.arange(len(vectors)), vectors)
    assert index.nlist == 1  # flat: below the threshold
    return index


@pytest.fixture
def ivf(vectors: np.ndarray) -> VectorIndex:
    """The same vectors in an IVF: the flat threshold lowered below their count."""
    index = VectorIndex(DIM, flat_below=500, nprobe=16, lists_per_sqrt=1.0, rebuild_growth=2.0)
    for start in range(0, len(vectors), 400):  # flat, an IVF at 800, rebuilt at 2,000 (> 2x)
        index.add(np.arange(start, start + 400), vectors[start : start + 400])
    assert index.nlist > 1 and index._trained == 2000
    return index


def test_exact_agrees_with_brute_force(index: VectorIndex, vectors: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    for query in _clustered(10, seed=2):
        keys = rng.choice(len(vectors), 300, replace=False)
        found, scores = index.exact(query, keys, 10)
        assert found.dtype == np.int64 and scores.dtype == np.float32
        assert list(found) == list(_brute(vectors, np.sort(keys), query, 10))
        np.testing.assert_allclose(scores, vectors[found] @ _unit(query), atol=1e-5)
        assert np.all(np.diff(scores) <= 0)


def test_exact_over_many_keys_reads_them_in_blocks(ivf: VectorIndex, vectors: np.ndarray) -> None:
    keys = np.concatenate([np.arange(len(vectors)), [10**9]])  # more than a block; one absent
    query = _clustered(1, seed=9)[0]
    found, scores = ivf.exact(query, keys, 20)
    assert list(found) == list(_brute(vectors, np.arange(len(vectors)), query, 20))
    np.testing.assert_allclose(scores, vectors[found] @ _unit(query), atol=1e-5)


def test_flat_search_is_exact(index: VectorIndex, vectors: np.ndarray) -> None:
    every = np.arange(len(vectors))
    for query in _clustered(20, seed=3):
        found, scores = index.search(query, 10)
        assert found.dtype == np.int64 and scores.dtype == np.float32
        assert list(found) == list(_brute(vectors, every, query, 10))
        np.testing.assert_allclose(scores, vectors[found] @ _unit(query), atol=1e-5)


def test_ivf_recall_on_clustered_data(ivf: VectorIndex, vectors: np.ndarray) -> None:
    every = np.arange(len(vectors))
    hits = 0
    queries = _clustered(50, seed=3)
    for query in queries:
        found, scores = ivf.search(query, 10)
        assert found.dtype == np.int64 and len(found) == 10
        assert np.all(np.diff(scores) <= 1e-6)
        np.testing.assert_allclose(scores, vectors[found] @ _unit(query), atol=1e-5)
        hits += len(set(found) & set(_brute(vectors, every, query, 10)))
    assert hits / (10 * len(queries)) >= 0.9


def test_search_returns_k_even_past_the_probed_lists(ivf: VectorIndex) -> None:
    ivf.nprobe = 1
    found, _ = ivf.search(_clustered(1, seed=4)[0], len(ivf))
    assert sorted(found) == list(range(len(ivf)))  # every list scanned in the end


def test_filtered_search_with_few_allowed_is_exact(
    index: VectorIndex, ivf: VectorIndex, vectors: np.ndarray
) -> None:
    allowed = np.array([5, 77, 140, 999, 1500, 1999, 3, 640, 1200, 42, 88, 1333])
    for query in _clustered(5, seed=4):
        truth = list(_brute(vectors, np.sort(allowed), query, 5))
        assert list(index.search_filtered(query, 5, allowed)[0]) == truth
        assert list(ivf.search_filtered(query, 5, allowed)[0]) == truth


def test_filtered_search_through_the_ivf_keeps_only_allowed(
    ivf: VectorIndex, vectors: np.ndarray
) -> None:
    allowed = np.arange(0, len(vectors), 3)
    query = _clustered(1, seed=5)[0]
    found, _ = ivf.search_filtered(query, 10, allowed, exact_below=100)
    assert len(found) == 10 and set(found) <= set(allowed)
    truth = set(_brute(vectors, allowed, query, 10))
    assert len(set(found) & truth) >= 8


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_adding_an_existing_key_replaces_its_vector(
    kind: str, index: VectorIndex, ivf: VectorIndex, vectors: np.ndarray
) -> None:
    index = index if kind == "flat" else ivf
    index.add(np.array([7, 7]), np.stack([vectors[1], vectors[9]]))  # the last one wins
    assert len(index) == len(vectors)
    found, scores = index.search(vectors[9], 2)
    assert set(found) == {7, 9} and scores[0] == pytest.approx(1.0, abs=1e-5)
    found, _ = index.exact(vectors[9], np.array([7]), 1)
    assert list(found) == [7]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_remove(kind: str, index: VectorIndex, ivf: VectorIndex, vectors: np.ndarray) -> None:
    index = index if kind == "flat" else ivf
    index.remove(np.array([10, 11, 123456]))  # an absent key is ignored
    assert len(index) == len(vectors) - 2
    assert 10 not in index and 12 in index and -1 not in index and "12" not in index
    found, _ = index.search(vectors[10], 5)
    assert 10 not in set(found)
    found, _ = index.exact(vectors[10], np.array([10, 11, 12]), 3)
    assert list(found) == [12]


def test_sparse_record_ids(index: VectorIndex, vectors: np.ndarray) -> None:
    big = np.array([10**12, 10**12 + 1])
    index.add(big, vectors[:2])
    assert len(index) == len(vectors) + 2 and 10**12 in index and 10**12 + 2 not in index
    found, _ = index.exact(vectors[0], np.concatenate([big, np.arange(100, 200)]), 2)
    assert found[0] == 10**12
    index.remove(big[:1])
    assert 10**12 not in index and 10**12 + 1 in index


def test_an_ivf_shrunk_by_removals_becomes_flat(ivf: VectorIndex, vectors: np.ndarray) -> None:
    ivf.remove(np.arange(1800))
    assert len(ivf) == 200 and ivf.nlist == 1 and ivf._trained == 0
    every = np.arange(1800, 2000)
    query = _clustered(1, seed=6)[0]
    assert list(ivf.search(query, 10)[0]) == list(_brute(vectors, every, query, 10))


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_and_load_round_trip(
    kind: str, index: VectorIndex, ivf: VectorIndex, vectors: np.ndarray, tmp_path: Path
) -> None:
    index = index if kind == "flat" else ivf
    index.add(np.array([3, 4]), vectors[[500, 501]])
    index.remove(np.array([5, 6, 7]))
    path = tmp_path / "memory.faiss"
    index.save(path)
    index.save(path)  # over an existing file
    assert [p.name for p in tmp_path.iterdir()] == ["memory.faiss"]
    loaded = VectorIndex.load(path, DIM, nprobe=index.nprobe, flat_below=index.flat_below)
    assert len(loaded) == len(index) and loaded.nlist == index.nlist
    assert loaded._trained == index._trained
    assert 5 not in loaded and 3 in loaded
    for query in _clustered(5, seed=8):
        assert list(loaded.search(query, 10)[0]) == list(index.search(query, 10)[0])
        keys = np.arange(0, 40)
        np.testing.assert_array_equal(
            loaded.exact(query, keys, 5)[0], index.exact(query, keys, 5)[0]
        )
    found, _ = loaded.exact(vectors[500], np.arange(10), 1)
    assert list(found) == [3]
    loaded.add(np.array([9999]), vectors[[8]])
    loaded.remove(np.array([0]))
    assert 9999 in loaded and 0 not in loaded and len(loaded) == len(index)


def test_load_refuses_missing_corrupt_and_wrong_dimension(
    index: VectorIndex, tmp_path: Path
) -> None:
    path = tmp_path / "memory.faiss"
    with pytest.raises(IndexFileError, match="rebuilt from the store"):
        VectorIndex.load(path, DIM)
    index.save(path)
    with pytest.raises(IndexFileError, match="dimension"):
        VectorIndex.load(path, DIM + 1)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        VectorIndex.load(path, DIM)
    damaged = bytearray(whole)
    damaged[len(damaged) // 2] ^= 0xFF  # a flipped byte inside a vector: only the CRC sees it
    path.write_bytes(bytes(damaged))
    with pytest.raises(IndexFileError, match="checksum"):
        VectorIndex.load(path, DIM)
    path.write_bytes(b"not an index" * 10)
    with pytest.raises(IndexFileError, match="another format"):
        VectorIndex.load(path, DIM)
    path.write_bytes(b"short")
    with pytest.raises(IndexFileError, match="too short"):
        VectorIndex.load(path, DIM)


def test_load_turns_faiss_errors_into_index_file_errors(index: VectorIndex, tmp_path: Path) -> None:
    """A file whose checksum matches but whose faiss part is cut short (written so, not torn):
    faiss's RuntimeError becomes an IndexFileError."""
    import struct
    import zlib

    path = tmp_path / "memory.faiss"
    index.save(path)
    whole = path.read_bytes()
    magic, _, meta_bytes, faiss_bytes, rows = struct.unpack("<8sIIQQ", whole[:32])
    body = whole[32 : 32 + meta_bytes + faiss_bytes // 2]
    header = struct.pack("<8sIIQQ", magic, zlib.crc32(body), meta_bytes, faiss_bytes // 2, rows)
    path.write_bytes(header + body)
    with pytest.raises(IndexFileError, match="corrupt"):
        VectorIndex.load(path, DIM)


def test_save_leaves_no_temporary_file_when_it_fails(
    index: VectorIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import selftune.memory.index as module

    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(module.faiss, "write_index", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        index.save(tmp_path / "memory.faiss")
    assert list(tmp_path.iterdir()) == []


def test_refuses_bad_input(index: VectorIndex) -> None:
    with pytest.raises(ValueError, match="dimension"):
        index.add(np.array([1]), np.ones((1, DIM + 1)))
    with pytest.raises(ValueError, match="non-negative"):
        index.add(np.array([-1]), np.ones((1, DIM)))
    with pytest.raises(ValueError, match="non-zero"):
        index.add(np.array([1]), np.zeros((1, DIM)))
    empty = VectorIndex(DIM)
    assert len(empty.search(np.ones(DIM), 5)[0]) == 0
    assert len(empty.exact(np.ones(DIM), np.array([1]), 5)[0]) == 0
    assert len(empty.search_filtered(np.ones(DIM), 5, np.array([1]))[0]) == 0


def test_threads_setting_is_restored(vectors: np.ndarray) -> None:
    import faiss

    before = faiss.omp_get_max_threads()
    index = VectorIndex(DIM, threads=1, flat_below=500)
    index.add(np.arange(len(vectors)), vectors)  # an IVF build with one thread
    index.search(vectors[0], 5)
    assert faiss.omp_get_max_threads() == before


def test_llama_cpp_loads_a_gguf_beside_the_index() -> None:
    """usearch's statically linked libstdc++ broke llama.cpp's GGUF loading (std::bad_cast) in
    the same process; faiss must not."""
    pytest.importorskip("llama_cpp")
    from selftune.models.base import default_gguf_path

    try:
        gguf = default_gguf_path()
    except Exception as exc:  # the package that ships the model is not installed
        pytest.skip(str(exc))
    script = textwrap.dedent(
        f"""
        import numpy as np
        from selftune.memory.index import VectorIndex
        index = VectorIndex(8, flat_below=100)
        rng = np.random.default_rng(0)
        index.add(np.arange(300), rng.standard_normal((300, 8)))
        assert index.nlist > 1 and len(index.search(rng.standard_normal(8), 5)[0]) == 5
        import llama_cpp
        llm = llama_cpp.Llama(model_path={str(gguf)!r}, vocab_only=True, verbose=False)
        assert llm.tokenize(b"hello world")
        print("loaded")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]


def test_a_failed_rebuild_leaves_an_empty_consistent_index(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = VectorIndex(DIM, flat_below=500)
    index.add(np.arange(400), vectors[:400])

    def fail(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(VectorIndex, "_ivf", fail)
    with pytest.raises(MemoryError):
        index.add(np.arange(400, 800), vectors[400:800])  # past flat_below: an IVF is trained
    assert len(index) == 0 and 0 not in index and len(index.search(vectors[0], 5)[0]) == 0
    monkeypatch.undo()
    index.add(np.arange(800), vectors[:800])  # the caller rebuilds it from the store
    assert len(index) == 800 and index.nlist > 1
