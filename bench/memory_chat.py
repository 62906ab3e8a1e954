"""Chat latency with memory on and off: remembering a chat (writing it and embedding it) must
never add to the chat's latency.

Run with ``make bench`` or ``python -m bench.memory_chat``. It serves the default model (through
llama.cpp) with two instances of the real app on loopback ports in this process, side by side, on
one engine: one with memory on and every answered chat remembered (``memory.enabled``,
``memory.record_chats``: each chat is written and embedded by all-MiniLM-L6-v2 in memory's
background thread), one with memory off. The client runs in the same process (as in
bench.serving), so the background embedding competes with the server and the client alike.
Rounds alternate between the two (on, off, off, on, ...), so that a machine getting slower or
faster over the run weighs on both alike:

- sequential: ``SEQUENTIAL_ROUNDS`` rounds of ``SEQUENTIAL`` chats, one after the other;
- concurrent: ``CONCURRENT_ROUNDS`` rounds of ``CONCURRENT`` chats, ``CLIENTS`` at a time.

Before an "off" round starts, the "on" server's backlog is waited for (every chat sent so far
has a memory record with a vector, read from its store), so its embedding never runs in the
other server's round. The chats' latencies (request to full answer, ``MAX_TOKENS`` tokens) are
printed as p50 and p95 for both, with their ratio; and the memory records with vectors the "on"
server wrote, which must be one per chat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.serving import served_in_process
from selftune.config import load_settings
from selftune.engines.base import Engine
from selftune.engines.factory import build_engine

MAX_TOKENS = 32
SEQUENTIAL, SEQUENTIAL_ROUNDS = 20, 3
CONCURRENT, CONCURRENT_ROUNDS, CLIENTS = 12, 2, 4
WARMUP = 4
TOLERANCE = 1.10  # p95 with memory on at most this times p95 with it off (the noise of a run)

SUBJECTS = (
    "bees",
    "the moon",
    "bread",
    "rivers",
    "volcanoes",
    "owls",
    "glass",
    "trains",
    "tea",
    "snow",
    "maps",
    "violins",
)
ASKS = (
    "Tell me one fact about {s}.",
    "Why do people like {s}?",
    "Describe {s} in a sentence.",
    "What is special about {s}?",
    "Give me a short poem about {s}.",
)


def _question(index: int) -> str:
    subject = SUBJECTS[index % len(SUBJECTS)]
    return ASKS[(index // len(SUBJECTS)) % len(ASKS)].format(s=subject)


def _chat(client: httpx.Client, index: int) -> float:
    started = time.perf_counter()
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "selftune",
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": _question(index)}],
        },
    )
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"the server answered {response.status_code}: {response.text[:300]}")
    return seconds


def _sequential(server: Server, start: int, count: int) -> list[float]:
    return [_chat(server.client, start + n) for n in range(count)]


def _concurrent(server: Server, start: int, count: int) -> list[float]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda n: _chat(server.client, start + n), range(count)))


def _embedded(store: Path) -> tuple[int, int]:
    """(interaction records, those with a vector) in the store of the "on" server."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as connection:
        row = connection.execute(
            "SELECT count(*), sum(EXISTS (SELECT 1 FROM memory_vectors v WHERE v.record_id = "
            "r.id)) FROM memory_records r WHERE r.kind = 'interaction'"
        ).fetchone()
    return int(row[0]), int(row[1] or 0)


def _wait_embedded(store: Path, chats: int, timeout: float = 120) -> float:
    """Wait until ``chats`` chats are remembered with vectors; the seconds it took."""
    started = time.monotonic()
    while _embedded(store)[1] < chats:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"memory embedded {_embedded(store)} of {chats} chats")
        time.sleep(0.05)
    return time.monotonic() - started


@dataclasses.dataclass
class Server:
    client: httpx.Client


@contextlib.contextmanager
def _served(engine: Engine, data_dir: Path, memory: bool) -> Iterator[Server]:
    """The real app on a loopback port in this process, serving ``engine``, memory on or off."""
    options = {"enabled": memory, "record_chats": True, "retrieval": False}
    with served_in_process(engine, data_dir, memory=options) as client:
        yield Server(client)


@contextlib.contextmanager
def _servers(folder: Path) -> Iterator[tuple[Server, Server]]:
    engine = build_engine(load_settings(data_dir=folder / "engine"))
    try:
        with (
            _served(engine, folder / "on", memory=True) as on,
            _served(engine, folder / "off", memory=False) as off,
        ):
            yield on, off
    finally:
        engine.close()


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return 1000 * statistics.median(seconds), 1000 * cuts[94]


def main() -> int:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selftune-bench-memory-chat-") as tmp:
        folder = Path(tmp)
        with _servers(folder) as (on, off):
            store = folder / "on" / "selftune.db"
            sent = 0
            for server in (on, off):
                _sequential(server, 10_000, WARMUP)  # the first answers allocate buffers
            sent += WARMUP
            _wait_embedded(store, sent)  # the embedding model is loaded, the index ready
            times: dict[tuple[str, str], list[float]] = {}
            backlog: list[float] = []
            plan = [("sequential", SEQUENTIAL)] * SEQUENTIAL_ROUNDS
            plan += [("concurrent", CONCURRENT)] * CONCURRENT_ROUNDS
            index = 0
            for number, (kind, count) in enumerate(plan):
                order = [("on", on), ("off", off)]
                if number % 2:
                    order.reverse()
                for label, server in order:
                    run = _sequential if kind == "sequential" else _concurrent
                    times.setdefault((kind, label), []).extend(run(server, index, count))
                    if label == "on":
                        sent += count
                        backlog.append(_wait_embedded(store, sent))
                index += count
            interactions, with_vectors = _embedded(store)
    print(
        f"chat latency with memory on and off (default model, {MAX_TOKENS} tokens, greedy; "
        f"two servers side by side, rounds alternated):"
    )
    print(
        "  chats                       | memory on p50 / p95 ms | memory off p50 / p95 ms | "
        "p50 ratio | p95 ratio"
    )
    ok = True
    for kind, label in (
        ("sequential", f"sequential, {SEQUENTIAL * SEQUENTIAL_ROUNDS} each"),
        ("concurrent", f"{CLIENTS} at a time, {CONCURRENT * CONCURRENT_ROUNDS} each"),
    ):
        on50, on95 = _percentiles(times[(kind, "on")])
        off50, off95 = _percentiles(times[(kind, "off")])
        ok &= on95 <= TOLERANCE * off95
        print(
            f"  {label:27s} | {on50:9.0f} / {on95:6.0f}     | {off50:10.0f} / {off95:6.0f}     | "
            f"{on50 / off50:9.2f} | {on95 / off95:9.2f}"
        )
    print(
        f"  memory on: {with_vectors} of {interactions} remembered chats embedded "
        f"({sent} chats sent); after a round its backlog took at most {max(backlog):.2f} s"
    )
    ok &= with_vectors == sent
    print(
        f"  p95 with memory on within {TOLERANCE:.2f}x of off, every chat embedded: "
        f"{'PASS' if ok else 'MISS'}"
    )
    print(f"  ({time.perf_counter() - began:.0f} s in all, server starts included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
