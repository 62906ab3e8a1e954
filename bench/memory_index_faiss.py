"""The memory's faiss vector index (selftune.memory.index) measured on the synthetic
sentence-embedding-like vectors of :mod:`bench.memory_index`: build time, memory, single-query
latency and recall@10, unfiltered and under tag filters, and :meth:`VectorIndex.exact`'s
latency at ``DEFAULT_EXACT_BELOW`` allowed keys.

The data, tags, exact reference, recall and table come from :mod:`bench.memory_index` (imported,
so the figures are comparable with usearch's); its filter of usearch's exact-path size is
replaced by one of ``DEFAULT_EXACT_BELOW`` keys of :mod:`selftune.memory.index`, the most
that :meth:`VectorIndex.search_filtered` serves exactly, so that row is the exact path's worst.
The index is built as the server builds it, by adds (of 100,000 vectors here), so at 1,000,000
it is an IVF trained at 500,000 (flat to 50,000, an IVF trained at 100,000, rebuilt at 500,000,
past four times that), with every core. Queries run one at a time on one thread.

Run with ``nice -n 5 python -m bench.memory_index_faiss [--sizes 100000,1000000] [--queries N]
[--seed S] [--sweep]``. The parameters (``selftune.memory.index``'s defaults) were chosen
on ``TUNING_SEED`` (``--sweep`` reprints that sweep), on two shared, busy cores:

* nprobe: at 1,000,000 (nlist 2,828, trained at 500,000) recall@10 was 0.995 at nprobe 8,
  0.9993 at 16 and 1.0 at 32, 64 and 128, with p50 0.8, 1.1, 1.7, 4.8 and 8.0 ms. These
  mixture data cluster more sharply than real embeddings, so nprobe 32 (twice what the data
  need) keeps a margin at about 2 ms.
* nlist = 4 sqrt(N), k-means of 10 iterations on 40 vectors a list: built in one add, the 1M
  index (nlist 4,000) took 107 s; built by adds of 100,000 (rebuilt at 100k and 500k), 128 s;
  usearch's HNSW took 524 s. faiss's HNSW was not measured at 1M (time-boxed):
  :mod:`bench.memory_index` skips it above 100,000 because its build is too long there.
* the flat threshold, 50,000: one list scanned whole, 1.7 ms a query at 20,000 (linear in N),
  so about 4 ms at 50,000; an IVF trained on fewer vectors gains little.
* ``DEFAULT_EXACT_BELOW``: :meth:`VectorIndex.exact` reads the allowed vectors back by id (the
  IVF's hash-table direct map, ``reconstruct_batch``, blocks of 2,048) and scores them with
  faiss's SIMD inner products: at 1,000,000 it took p50 5.4 ms at 5,000 keys, 20 ms at 20,000
  (a bitmap ``IDSelector`` over a full scan took 15 ms at 20,000, 5 ms at 1,000), so the
  exact path stops at 10,000 keys, near 10 ms. numpy's matmul was not used for the scores: its
  OpenBLAS threads made a 2,048-row product take 10 ms instead of 0.05 on busy cores.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

from bench.memory_index import (
    DIM,
    HEADER,
    REPORT_SEED,
    TARGETS,
    TUNING_SEED,
    Data,
    K,
    Keys,
    Library,
    Matrix,
    Row,
    Searcher,
    data,
    exact_top,
    measure,
    print_row,
    recall,
    timed,
)
from selftune.memory.index import (
    DEFAULT_EXACT_BELOW,
    DEFAULT_FLAT_BELOW,
    DEFAULT_LISTS_PER_SQRT,
    DEFAULT_NPROBE,
    DEFAULT_REBUILD_GROWTH,
    VectorIndex,
)

CACHE = Path("/tmp/memidx_cache")  # bench.memory_index's cache: .npz keyed by seed, n, queries
ADD_BATCH = 100_000
SWEEP_NPROBES = (8, 16, 32, 64, 128)
EXACT_SIZES = (1_000, 5_000, DEFAULT_EXACT_BELOW, 20_000)  # 20,000: the server's exact_below


class FaissIVF(Library):
    def __init__(self, nprobe: int = DEFAULT_NPROBE) -> None:
        self.nprobe = nprobe
        self.index: VectorIndex | None = None
        self.name = "faiss IVF"

    def build(self, vectors: Matrix) -> None:
        self.index = VectorIndex(DIM, nprobe=self.nprobe)
        keys = np.arange(len(vectors), dtype=np.int64)
        for start in range(0, len(vectors), ADD_BATCH):
            self.index.add(keys[start : start + ADD_BATCH], vectors[start : start + ADD_BATCH])
        self.name = f"faiss IVF nlist={self.index.nlist} nprobe={self.index.nprobe}"

    def index_bytes(self) -> int:
        assert self.index is not None
        return self.index.memory_bytes()

    def searcher(self, allowed: Keys | None) -> Searcher:
        index = self.index
        assert index is not None
        if allowed is None:
            return lambda q: index.search(q, K)[0]
        return lambda q: index.search_filtered(q, K, allowed)[0]


def _with_exact_path(d: Data, n: int, seed: int) -> Data:
    """``d`` with its exact-path filter (usearch's size) replaced by one of this index's."""
    filters = {name: keys for name, keys in d.filters.items() if not name.startswith("exact")}
    picked = np.random.default_rng((seed, n)).choice(n, min(n, DEFAULT_EXACT_BELOW), replace=False)
    filters[f"exact path ({len(picked):,})"] = np.sort(picked).astype(np.int64)
    return Data(d.vectors, d.queries, filters)


def exact_latency(index: VectorIndex, queries: Matrix, size: int, seed: int) -> str:
    n = len(index)
    keys = np.sort(np.random.default_rng((seed, size)).choice(n, min(n, size), replace=False))
    times = timed(lambda q: index.exact(q, keys, K)[0], queries)[1]
    return (
        f"exact() over {len(keys):,} keys: p50 {np.percentile(times, 50) * 1e3:.2f} ms,"
        f" p95 {np.percentile(times, 95) * 1e3:.2f} ms"
    )


def run(n: int, queries: int, seed: int) -> list[Row]:
    start = time.perf_counter()
    d = _with_exact_path(data(n, queries, seed, CACHE), n, seed)
    truths = {name: exact_top(d.vectors, d.queries, allowed) for name, allowed in d.filters.items()}
    print(
        f"{n:,} vectors x {DIM}, {queries} queries, k={K}; data and ground truth in"
        f" {time.perf_counter() - start:.0f} s; exact path up to {DEFAULT_EXACT_BELOW:,} allowed",
        flush=True,
    )
    print(HEADER, flush=True)
    library = FaissIVF()
    rows = []
    for row in measure(library, d, truths):
        print_row(n, row)
        rows.append(row)
    assert library.index is not None
    for size in EXACT_SIZES:
        print(f"  {exact_latency(library.index, d.queries[:200], size, seed)}", flush=True)
    library.release()
    gc.collect()
    return rows


def sweep(n: int, queries: int) -> None:
    """The tuning sweep on ``TUNING_SEED``, unfiltered: the index built once, searched at
    several nprobe; then exact() at several sizes."""
    d = data(n, queries, TUNING_SEED, CACHE)
    truth = exact_top(d.vectors, d.queries, None)
    print(f"sweep: seed {TUNING_SEED}, {n:,} vectors, {queries} queries, unfiltered", flush=True)
    library = FaissIVF()
    gc.collect()
    start = time.perf_counter()
    library.build(d.vectors)
    build = time.perf_counter() - start
    index = library.index
    assert index is not None
    for nprobe in SWEEP_NPROBES:
        index.nprobe = nprobe
        found, times = timed(library.searcher(None), d.queries)
        print(
            f"  nlist {index.nlist:>5} (trained at {index._trained:,})  build {build:6.1f} s"
            f"  nprobe {nprobe:>4}  p50 {np.percentile(times, 50) * 1e3:5.2f} ms"
            f"  p95 {np.percentile(times, 95) * 1e3:5.2f} ms  recall {recall(found, truth):.4f}",
            flush=True,
        )
    for size in EXACT_SIZES:
        print(f"  {exact_latency(index, d.queries[:200], size, TUNING_SEED)}", flush=True)
    library.release()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_index_faiss", description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated index sizes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=REPORT_SEED)
    parser.add_argument(
        "--sweep", action="store_true", help="reprint the tuning sweep at the sizes and stop"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.sweep:
        for n in sizes:
            sweep(n, args.queries)
        return 0
    note = (
        " (the tuning seed: these figures are not independent)" if args.seed == TUNING_SEED else ""
    )
    print(f"memory index (faiss): seed {args.seed}{note}", flush=True)
    print(
        f"parameters: flat up to {DEFAULT_FLAT_BELOW:,}, nlist {DEFAULT_LISTS_PER_SQRT:g} sqrt(N),"
        f" nprobe {DEFAULT_NPROBE}, rebuilt past {DEFAULT_REBUILD_GROWTH:g}x its trained size",
        flush=True,
    )
    targets = ", ".join(f"{name} {value:g}" for name, value in TARGETS.items())
    print(f"targets at 1,000,000 vectors: {targets} (PASS/MISS at that size)", flush=True)
    for n in sizes:
        run(n, args.queries, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
