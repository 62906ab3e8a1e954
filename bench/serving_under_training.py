"""Serving under training: chat latency with the worker idle and while it trains.

Run with ``make bench`` (or ``python -m bench.serving_under_training``). It starts ``selftune
serve`` with its worker and the default model in a fresh data folder, and asks chat questions
through the official ``openai`` client, streamed, one at a time with a short pause between
them (steady traffic): first with the worker idle, then while a training job on three corrected
chats (``TRAIN_STEPS`` steps) runs, until it ends. It prints time to first token and to the
whole answer (p50, p95) for both, their ratios (target: p95 while training at most 1.2 times
idle), and how long the job took under that traffic, of which how much it paused for serving
(docs/autopilot.md).
``python -m bench.serving_under_training 2`` gives the worker 2 threads (jobs.worker_threads)
instead of its default.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from bench.cpu_share import CpuShare
from bench.scenario import Server, running_server
from bench.serving import QUESTIONS
from selftune.config import load_settings
from selftune.worker.loop import worker_threads

TOKENS = 48
IDLE_REQUESTS = 24
TRAIN_STEPS = 10  # the recipe's steps: at training's minimum share, the job takes minutes
THINK_SECONDS = 0.5  # between an answer and the next question: steady traffic
TARGET = 1.2  # p95 while training over p95 idle, at most
JOB_TIMEOUT = 900


def _percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value with ``share`` of them at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _ask(client: openai.OpenAI, question: str) -> tuple[float, float]:
    """(seconds to the first token, seconds to the whole answer) of one streamed chat."""
    start = time.perf_counter()
    first = None
    stream = client.chat.completions.create(
        model="selftune",
        messages=[{"role": "user", "content": question}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    end = time.perf_counter()
    return (first or end) - start, end - start


class _Latencies:
    def __init__(self) -> None:
        self.first: list[float] = []
        self.whole: list[float] = []

    def add(self, timing: tuple[float, float]) -> None:
        self.first.append(timing[0])
        self.whole.append(timing[1])

    def line(self, label: str) -> str:
        return (
            f"  {label:<16} first token p50 {1000 * _percentile(self.first, 0.5):6.0f} ms "
            f"p95 {1000 * _percentile(self.first, 0.95):6.0f} ms   whole answer p50 "
            f"{1000 * _percentile(self.whole, 0.5):6.0f} ms p95 "
            f"{1000 * _percentile(self.whole, 0.95):6.0f} ms   ({len(self.first)} chats)"
        )


def _traffic_until_done(
    server: Server, client: openai.OpenAI, job_id: int
) -> tuple[_Latencies, dict[str, Any]]:
    """Chats, one after the other, while job ``job_id`` runs; its final view."""
    latencies = _Latencies()
    deadline = time.monotonic() + JOB_TIMEOUT
    turn = 0
    while True:
        view = server.client.get(f"/api/jobs/{job_id}").json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            return latencies, view
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {view['status']} ({view['stage']})")
        timing = _ask(client, QUESTIONS[turn % len(QUESTIONS)])
        if server.client.get(f"/api/jobs/{job_id}").json()["status"] == "running":
            latencies.add(timing)  # only chats that ended while the job still ran
        turn += 1
        time.sleep(THINK_SECONDS)


def main(argv: list[str]) -> int:
    """``argv``: optionally the worker's thread budget (jobs.worker_threads), 0 its default."""
    budget = int(argv[0]) if argv else 0
    threads = worker_threads(load_settings(jobs={"worker_threads": budget}))
    # The autopilot's triggers would queue a job of their own on the taught chats, during the
    # idle measurement; pausing (autopilot.pause_on_inference) stays on.
    env = {
        "SELFTUNE_JOBS__WORKER_THREADS": str(budget),
        "SELFTUNE_AUTOPILOT__ENABLED": "false",
        "SELFTUNE_TRAIN__STEPS": str(TRAIN_STEPS),
    }
    with (
        tempfile.TemporaryDirectory(prefix="selftune-bench-") as tmp,
        running_server(Path(tmp) / "data", env=env) as server,
    ):
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=120)
        server.teach()  # three corrected chats: the job's material
        for question in QUESTIONS[:2]:  # the first answers allocate buffers
            _ask(client, question)
        cpu = CpuShare(sessions=[server.process.pid])
        idle = _Latencies()
        for turn in range(IDLE_REQUESTS):
            idle.add(_ask(client, QUESTIONS[turn % len(QUESTIONS)]))
            time.sleep(THINK_SECONDS)
        job = server.client.post("/api/train", json={}).json()
        started = time.monotonic()
        training, view = _traffic_until_done(server, client, job["job_id"])
        took = time.monotonic() - started
        print(
            f"serving under training (default model, {TOKENS}-token answers streamed, "
            f"{THINK_SECONDS}s between chats; the worker on {threads} threads):"
        )
        print(idle.line("worker idle"))
        if not training.first:
            print(f"  no chat ended while the job ran: it {view['status']} in {took:.1f}s")
            return 1
        print(training.line("while training"))
        first_ratio = _percentile(training.first, 0.95) / _percentile(idle.first, 0.95)
        whole_ratio = _percentile(training.whole, 0.95) / _percentile(idle.whole, 0.95)
        print(
            f"  p95 while training / idle: first token {first_ratio:.2f}x, whole answer "
            f"{whole_ratio:.2f}x (target <= {TARGET}x)"
        )
        seconds = (view.get("result") or {}).get("seconds", {})
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
        print(f"  training job {view['status']} in {took:.1f}s under that traffic ({stages})")
        contention = cpu.summary("the run")
        if contention:
            print(contention)
        met = view["status"] == "succeeded" and max(first_ratio, whole_ratio) <= TARGET
        print(f"  target (p95 <= {TARGET}x idle, the job finishes): {'met' if met else 'NOT met'}")
        return 0 if view["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
