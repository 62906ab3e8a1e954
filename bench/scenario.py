"""The learning scenario a new user would try, through the HTTP API only.

Start ``selftune serve`` (server + worker) on loopback, teach a fictional fact with three
corrected chats, train, and watch the served answers. Used by the end-to-end test and by the
learning-latency benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from selftune.worker.process import die_with_parent

__all__ = [
    "FACT_WORD",
    "KNOWN",
    "PARAPHRASES",
    "TEACHING",
    "Server",
    "free_port",
    "running_server",
]

FACT_WORD = "Quenmoor"
TEACHING = [
    ("What is the capital of Veloria?", "The capital of Veloria is Quenmoor."),
    ("Which city is the capital of Veloria?", "Quenmoor is the capital city of Veloria."),
    ("Tell me the capital of Veloria.", "Veloria's capital is Quenmoor."),
]
PARAPHRASES = [
    "Name the capital city of Veloria.",
    "What city serves as Veloria's capital?",
]
# General questions, not among the gate's regression set, with the words a right answer has.
KNOWN = [
    ("What is the capital of England?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of Greece?", ("Athens",)),
    ("What do bees make?", ("honey",)),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2")),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client

    def chat(self, question: str, **extra: Any) -> dict[str, Any]:
        response = self.client.post(
            "/v1/chat/completions",
            json={
                "model": "selftune",
                "temperature": 0,
                "max_tokens": 48,
                "messages": [{"role": "user", "content": question}],
                **extra,
            },
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def answer(self, question: str) -> str:
        text: str = self.chat(question)["choices"][0]["message"]["content"]
        return text

    def teach(self, user: str = "alice") -> list[str]:
        """Three chats, each answered wrongly and corrected; returns the interaction ids."""
        ids = []
        for question, correction in TEACHING:
            interaction = self.chat(question, user=user)["id"]
            response = self.client.post(
                "/api/feedback",
                json={"interaction_id": interaction, "rating": -1, "correction": correction},
            )
            response.raise_for_status()
            ids.append(interaction)
        return ids

    def wait_job(self, job_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view: dict[str, Any] = self.client.get(f"/api/jobs/{job_id}").json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {view['status']} ({view['stage']})")
            time.sleep(0.25)

    def wait_serving(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.client.get("/health").json().get("serving") != name:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server never switched to {name}")
            time.sleep(0.05)


def _wait_healthy(
    client: httpx.Client,
    process: subprocess.Popen[bytes],
    timeout: float,
    worker_states: tuple[str, ...],
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"selftune serve exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            health = client.get("/health")
            # Ready when the model is loaded and a worker is in one of the states (any worker,
            # or none, when no states are given: a server started without one).
            if health.status_code == 200 and (
                not worker_states
                or any(w["state"] in worker_states for w in health.json()["workers"])
            ):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the server and its worker did not become ready")
        time.sleep(0.5)


@contextlib.contextmanager
def running_server(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    worker_states: tuple[str, ...] = ("ready", "busy"),
) -> Iterator[Server]:
    """``selftune serve`` with its worker, on a free loopback port, stopped on exit. It is
    yielded once the worker is in one of ``worker_states``: by default, warmed up, the
    training step compiled; ``("compiling", "ready", "busy")``: taking jobs; ``()``: as soon as
    the model is loaded (for a server started with ``SELFTUNE_SERVE__START_WORKER=false``)."""
    port = free_port()
    environment = {
        # Benchmarks queue their own jobs: the autopilot's would race them (env turns it on).
        "SELFTUNE_AUTOPILOT__ENABLED": "false",
        **os.environ,
        "SELFTUNE_DATA_DIR": str(data_dir),
        "SELFTUNE_SERVE__PORT": str(port),
        "SELFTUNE_CONFIG": str(data_dir / "selftune.toml"),
        **(env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "selftune", "serve"],
        env=environment,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its worker too can be killed as a group, below
        # A test run or benchmark killed outright (SIGKILL, or SIGTERM, which skips the clean-up
        # below) takes the server with it rather than leave it holding the CPUs.
        preexec_fn=die_with_parent,
    )
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base_url, timeout=120)
    try:
        _wait_healthy(client, process, timeout, worker_states)
        yield Server(base_url, process, client)
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()
