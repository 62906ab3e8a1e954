"""Overload: what the server does at 0.5x, 1x, 2x and 4x the load it can answer.

Run with ``python -m bench.load``. It starts ``selftune serve`` with the default model (no
training worker, so the engine has the CPUs) on loopback, measures its capacity (short chats,
``MAX_TOKENS`` tokens each, sent by two clients back to back so the engine is never idle), then
offers each multiple of that rate for ``LEVEL_SECONDS``, arrivals at random (Poisson: bursts
come as in real traffic), and prints per level:

- offered rate and throughput (answers per second, over the level and its drain);
- p50/p95/p99 latency of the accepted requests;
- the share rejected (429 with ``Retry-After``), how fast (p95), and the median Retry-After;
- errors: 5xx, other unexpected statuses, and transport errors (refused, reset, timed out);
- the server process's memory (RSS) at the end of the level and at its peak, sampled.

Acceptance (the issue's): past capacity the server rejects at once with Retry-After, its memory
stays bounded (RSS at 4x within ``RSS_GROWTH_MIB`` of 1x's), and 4x has no errors. The client
runs on the same machine as the server, and takes some of its CPU at the higher rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.scenario import running_server

QUESTIONS = [
    "Why is the sky blue?",
    "Name a fruit that is yellow.",
    "What is two plus three?",
    "Say hello in French.",
    "What do bees make?",
    "Which planet is closest to the sun?",
    "What colour is grass?",
    "Give me a word that rhymes with cat.",
]
MAX_TOKENS = 16
LEVELS = (0.5, 1.0, 2.0, 4.0)
LEVEL_SECONDS = 20.0
CAPACITY_SECONDS = 12.0
QUEUE = 16  # serve.max_queued_requests, the default
CLIENT_TIMEOUT = 60.0
RSS_GROWTH_MIB = 64  # how much more the server may hold at 4x than at 1x


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: int | None  # None: a transport error
    seconds: float
    retry_after: str | None = None


def _body(index: int) -> dict[str, object]:
    question = QUESTIONS[index % len(QUESTIONS)]
    return {
        "model": "selftune",
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": question}],
    }


async def _send(client: httpx.AsyncClient, index: int) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post("/v1/chat/completions", json=_body(index))
    except httpx.TransportError:
        return Outcome(None, time.perf_counter() - started)
    return Outcome(
        response.status_code, time.perf_counter() - started, response.headers.get("Retry-After")
    )


def _rss(pid: int) -> int:
    """The process's resident memory in bytes (psutil where installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
    return int(psutil.Process(pid).memory_info().rss)


async def _capacity(client: httpx.AsyncClient) -> float:
    """Answers per second with the engine always busy: two clients, each sending its next
    request as soon as its last is answered."""
    for index in range(4):  # warm up: the first answers allocate buffers
        await _send(client, index)
    deadline = time.perf_counter() + CAPACITY_SECONDS
    answered = 0

    async def back_to_back(offset: int) -> None:
        nonlocal answered
        index = offset
        while time.perf_counter() < deadline:
            if (await _send(client, index)).status == 200:
                answered += 1
            index += 2

    started = time.perf_counter()
    await asyncio.gather(back_to_back(0), back_to_back(1))
    return answered / (time.perf_counter() - started)


@dataclasses.dataclass(frozen=True)
class Level:
    multiple: float
    offered: float  # requests per second
    outcomes: list[Outcome]
    seconds: float  # from the first request to the last answer
    rss_end: int
    rss_peak: int

    def _of(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def row(self) -> str:
        ok, rejected = self._of(200), self._of(429)
        latencies = sorted(o.seconds * 1000 for o in ok)
        rejections = sorted(o.seconds * 1000 for o in rejected)
        transport = sum(o.status is None for o in self.outcomes)
        server = sum(o.status is not None and o.status >= 500 for o in self.outcomes)
        other = len(self.outcomes) - len(ok) - len(rejected) - transport - server
        retry = [int(o.retry_after) for o in rejected if o.retry_after]
        cells = [
            f"{self.multiple:.1f}x",
            f"{self.offered:5.2f}",
            f"{len(self.outcomes):5d}",
            f"{len(ok) / self.seconds:5.2f}",
            *(_percentile(latencies, q) for q in (50, 95, 99)),
            f"{100 * len(rejected) / max(len(self.outcomes), 1):5.1f}%",
            _percentile(rejections, 95),
            f"{statistics.median(retry):.0f}" if retry else "-",
            f"{server}/{other}/{transport}",
            f"{self.rss_end / 2**20:6.0f}/{self.rss_peak / 2**20:.0f}",
        ]
        return " | ".join(cells)

    def failures(self) -> int:
        return sum(o.status is None or o.status not in (200, 429) for o in self.outcomes)

    def rejection_p95(self) -> float:
        times = [o.seconds for o in self._of(429)]
        return _quantile(sorted(times), 95) if times else 0.0

    def rejected_without_retry_after(self) -> int:
        return sum(o.retry_after is None for o in self._of(429))


def _quantile(values: list[float], q: int) -> float:
    return values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)]


def _percentile(values: list[float], q: int) -> str:
    return f"{_quantile(values, q):6.0f}" if values else "     -"


async def _level(
    client: httpx.AsyncClient, multiple: float, rate: float, pid: int, seed: int
) -> Level:
    """``rate`` requests a second for LEVEL_SECONDS, then wait for the last answer."""
    rng = random.Random(seed)
    peak = _rss(pid)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    sends: list[asyncio.Task[Outcome]] = []
    at = 0.0
    while (at := at + rng.expovariate(rate)) < LEVEL_SECONDS:
        await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
        sends.append(asyncio.create_task(_send(client, len(sends))))
    outcomes = list(await asyncio.gather(*sends))
    seconds = time.perf_counter() - started
    stop.set()
    await sampler
    end = _rss(pid)
    return Level(multiple, rate, outcomes, seconds, end, max(peak, end))


async def _run(base_url: str, pid: int) -> tuple[float, list[Level]]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT, limits=limits
    ) as client:
        capacity = await _capacity(client)
        levels = []
        for seed, multiple in enumerate(LEVELS):
            levels.append(await _level(client, multiple, multiple * capacity, pid, seed))
            await asyncio.sleep(2)  # let the queue empty between levels
    return capacity, levels


@contextlib.contextmanager
def _server(folder: Path) -> Iterator[tuple[str, int]]:
    env = {
        "SELFTUNE_SERVE__START_WORKER": "false",
        "SELFTUNE_SERVE__MAX_QUEUED_REQUESTS": str(QUEUE),
        # A cache kept between runs: the default model's f16 copy is converted once.
        "SELFTUNE_CACHE_PATH": os.environ.get(
            "SELFTUNE_CACHE_PATH", str(Path(tempfile.gettempdir()) / "selftune-bench-cache")
        ),
    }
    with running_server(folder / "data", env=env, worker_states=()) as server:
        yield server.base_url, server.process.pid


def main() -> int:
    began = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="selftune-bench-load-") as tmp,
        _server(Path(tmp)) as (
            url,
            pid,
        ),
    ):
        capacity, levels = asyncio.run(_run(url, pid))
    print(
        f"load (default model, chats of {MAX_TOKENS} tokens, serve.max_queued_requests {QUEUE}, "
        f"{LEVEL_SECONDS:.0f} s per level, Poisson arrivals):"
    )
    print(f"  capacity: {capacity:.2f} answers/s (two clients back to back)")
    print(
        "  load | offered/s | sent | answered/s | p50 ms | p95 ms | p99 ms | rejected | "
        "reject p95 ms | Retry-After s | errors 5xx/other/transport | RSS MiB end/peak"
    )
    for level in levels:
        print(f"  {level.row()}")
    one, four = levels[LEVELS.index(1.0)], levels[LEVELS.index(4.0)]
    fast = four.rejection_p95() < 0.25 and four.rejected_without_retry_after() == 0
    bounded = four.rss_peak - one.rss_peak <= RSS_GROWTH_MIB * 2**20
    clean = four.failures() == 0
    print(
        f"  at 4x: rejections p95 {1000 * four.rejection_p95():.0f} ms (target < 250 ms, all "
        f"with Retry-After: {'yes' if four.rejected_without_retry_after() == 0 else 'no'}); "
        f"peak RSS {(four.rss_peak - one.rss_peak) / 2**20:+.0f} MiB over 1x's "
        f"(target <= {RSS_GROWTH_MIB}); errors {four.failures()} (target 0)"
    )
    print(f"  targets: {'met' if fast and bounded and clean else 'NOT met'}")
    print(f"  ({time.perf_counter() - began:.0f} s in all, server start included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
