"""The proxy's own latency: a request through ``[proxy]`` against the same request sent direct.

Run with ``make bench`` (or ``python -m bench.proxy_latency``). The upstream is a fast fake
OpenAI server (bench/fake_openai.py) in its own process on loopback; the proxy is the real app
(``proxy.upstream_url`` set, ``proxy.keep = "all"``: each answer is recorded with its example
before the client gets its end) in this process. Each round sends the same chat request direct and
through the proxy, one after the other, on kept-alive ``http.client`` connections, JSON and
streamed; the added latency is each pair's difference. Target: p95 under 5 ms.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx

from bench.scenario import free_port
from selftune.config import load_settings
from selftune.engines.base import Engine

ROUNDS = 400
WARMUP = 20
TARGET_P95_MS = 5.0


class _NoLocalModel:
    """Stands for the engine: with ``proxy.local_share = 0`` the proxy never asks it."""

    name = "none"
    context_length = 2048


def _wait_healthy(url: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not start")
        time.sleep(0.1)


@contextlib.contextmanager
def _upstream() -> Iterator[int]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.fake_openai:app", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(command)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def _proxy(upstream_port: int, data_dir: Path) -> Iterator[int]:
    """The real app, in a thread of this process (as bench/serving.py runs it)."""
    import uvicorn

    from selftune.api.app import create_app

    settings = load_settings(
        data_dir=data_dir,
        serve={"start_worker": False},
        proxy={"upstream_url": f"http://127.0.0.1:{upstream_port}/v1", "keep": "all"},
    )
    port = free_port()
    app = create_app(settings, cast(Engine, _NoLocalModel()))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _timed(connection: http.client.HTTPConnection, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    connection.request(
        "POST", "/v1/chat/completions", body=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    response = connection.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"answered {response.status}: {answer[:300]!r}")
    return elapsed


def _added_ms(upstream_port: int, proxy_port: int, stream: bool) -> list[float]:
    direct = http.client.HTTPConnection("127.0.0.1", upstream_port)
    proxied = http.client.HTTPConnection("127.0.0.1", proxy_port)
    added = []
    for index in range(WARMUP + ROUNDS):
        question = f"How long is the word number{index}?"
        body = {"model": "fake", "messages": [{"role": "user", "content": question}],
                "stream": stream}  # fmt: skip
        through = _timed(proxied, body)
        alone = _timed(direct, body)
        if index >= WARMUP:
            added.append(1000 * (through - alone))
    direct.close()
    proxied.close()
    return added


def _percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="selftune-bench-proxy-") as tmp:
        os.environ["SELFTUNE_CONFIG"] = str(Path(tmp) / "absent.toml")
        with _upstream() as upstream_port, _proxy(upstream_port, Path(tmp) / "data") as port:
            print(f"proxy latency (fake upstream on loopback, {ROUNDS} requests each, keep=all):")
            ok = True
            for label, stream in (("JSON", False), ("streamed", True)):
                added = _added_ms(upstream_port, port, stream)
                p50, p95 = statistics.median(added), _percentile(added, 0.95)
                ok &= p95 < TARGET_P95_MS
                print(f"  {label:9s} added by the proxy: p50 {p50:.2f} ms, p95 {p95:.2f} ms")
            print(f"  target (p95 < {TARGET_P95_MS:.0f} ms): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
