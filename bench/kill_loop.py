"""Crash loop: SIGKILL the server under concurrent load, again and again, and check the store.

Each round starts ``selftune serve`` (server and worker, one process group) on the same data
folder, lets ``--clients`` threads send chats (each with a unique marker) and feedback, queues a
small training job now and then, and kills the whole group with SIGKILL after a random delay.
With the server down it checks that

- every chat answered 200 is in the store with the answer the client got, and every feedback
  answered 200 is there too (nothing acknowledged is lost);
- ``PRAGMA integrity_check`` says ok (SQLite);
- every artifact folder in sight (``versions/``, ``exports/<version>/``) and every version the
  store lists is complete: its manifest verifies; half-written ones only exist under the
  ``.tmp-`` names readers never use.

Then the worker alone is killed (SIGKILL) while it writes a version (training's save) and while
it writes an export, at the moment its temporary folder appears plus a random few milliseconds;
the same folders are checked, and a new worker must take the job up again and finish it. A last
undisturbed run must bring every job to an end: the worker recovers the jobs the kills
interrupted.

The model is a tiny random Llama (2 layers, the default model's tokenizer) written as an f32
GGUF, served with llama.cpp as the default model is; it starts in seconds.

    .venv/bin/python -m bench.kill_loop                # 200 kills (about 50 minutes)
    .venv/bin/python -m bench.kill_loop --kills 20 --worker-kills 2
    .venv/bin/python -m bench.kill_loop --database postgresql+psycopg://u@host:port/empty_db

Exit status 0 when nothing was lost and nothing was corrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.scenario import free_port
from selftune.atomic import ArtifactError, verify_manifest
from selftune.worker.process import die_with_parent

__all__ = ["Report", "ServeUnavailable", "main", "make_tiny_gguf", "run"]

CORRECTION = "The capital of Veloria is Quenmoor."
TERMINAL = ("succeeded", "failed", "cancelled")
PENDING = "SELECT id FROM jobs WHERE status IN ('queued', 'running')"


def make_tiny_gguf(folder: Path) -> Path:
    """A 2-layer random Llama with the default model's tokenizer, as an f32 GGUF (seconds)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from selftune.export.gguf_model import write_llama_gguf
    from selftune.models.base import default_gguf_path

    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1234)
    hf_dir = folder / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return write_llama_gguf(hf_dir, folder / "tiny.gguf", tokenizer_gguf=gguf)


class ServeUnavailable(RuntimeError):
    """``selftune serve`` could not start at all here (before any kill)."""


@dataclasses.dataclass
class Report:
    kills: int = 0
    worker_kills: int = 0
    worker_kills_missed: int = 0  # the job ended before the folder it watched appeared
    chats_acknowledged: int = 0
    feedback_acknowledged: int = 0
    lost: int = 0
    wrong_answer: int = 0
    integrity_failures: int = 0
    incomplete_artifacts: int = 0
    jobs_recovered: int = 0
    jobs_unfinished: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.wrong_answer
            or self.integrity_failures
            or self.incomplete_artifacts
            or self.jobs_unfinished
        )

    def fail(self, message: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(message)

    def text(self, database: str) -> str:
        acknowledged = self.chats_acknowledged + self.feedback_acknowledged
        lines = [
            f"kill loop ({database}): {self.kills} server kills under load, "
            f"{self.worker_kills} worker kills during save/export "
            f"({self.worker_kills_missed} missed the write), {self.seconds:.0f} s",
            f"  acknowledged requests: {acknowledged} "
            f"({self.chats_acknowledged} chats, {self.feedback_acknowledged} feedback)",
            f"  lost: {self.lost}   stored with another answer: {self.wrong_answer}",
            f"  integrity failures: {self.integrity_failures}   "
            f"incomplete artifacts visible: {self.incomplete_artifacts}",
            f"  jobs recovered after a kill: {self.jobs_recovered}   "
            f"left unfinished: {self.jobs_unfinished}",
            f"  result: {'OK' if self.ok else 'FAILED'}",
        ]
        lines += [f"  ! {error}" for error in self.errors]
        return "\n".join(lines)


class Store:
    """Reads the store directly (the server is down when it does)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.url = url
        self.sqlite_path = url.removeprefix("sqlite:///") if url.startswith("sqlite") else None
        self.engine = create_engine(url, poolclass=_null_pool())

    def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    def integrity(self) -> str:
        if self.sqlite_path is None:
            return "ok"  # PostgreSQL: the rows' checks stand for it
        connection = sqlite3.connect(self.sqlite_path)
        try:
            return ", ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
        finally:
            connection.close()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


@dataclasses.dataclass
class Acked:
    chats: dict[str, str] = dataclasses.field(default_factory=dict)  # interaction id: answer
    feedback: dict[int, str] = dataclasses.field(default_factory=dict)  # id: interaction id
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def _client(base_url: str, number: int, acked: Acked, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not stop.is_set():
            marker = f"m-{uuid.uuid4().hex[:12]}"
            try:
                response = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "selftune",
                        "user": f"client{number}",
                        "max_tokens": rng.choice((1, 4, 8)),
                        "messages": [{"role": "user", "content": f"Say {marker}."}],
                    },
                )
                if response.status_code != 200:
                    continue
                body = response.json()
                interaction = body["id"]
                with acked.lock:
                    acked.chats[interaction] = body["choices"][0]["message"]["content"]
                if rng.random() < 0.3:
                    response = client.post(
                        "/api/feedback",
                        json={
                            "interaction_id": interaction,
                            "rating": -1,
                            "correction": CORRECTION,
                        },
                    )
                    if response.status_code == 200:
                        with acked.lock:
                            acked.feedback[response.json()["feedback_id"]] = interaction
            except (httpx.TransportError, ValueError, KeyError):
                time.sleep(0.01)  # the server died under us: not acknowledged, not counted


class Harness:
    def __init__(self, root: Path, gguf: Path, database: str | None) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SELFTUNE_")}
        self.env = {
            **inherited,
            "SELFTUNE_CONFIG": str(root / "selftune.toml"),
            "SELFTUNE_DATA_DIR": str(self.data),
            "SELFTUNE_CACHE_PATH": str(root / "cache"),
            "SELFTUNE_BASE_MODEL": str(gguf),
            "SELFTUNE_THREADS": "1",
            "SELFTUNE_SERVE__CONTEXT_LENGTH": "256",
            "SELFTUNE_SERVE__DEFAULT_MAX_TOKENS": "8",
            "SELFTUNE_TRAIN__COMPILE": "off",
            "SELFTUNE_TRAIN__STEPS": "3",
            "SELFTUNE_TRAIN__MAX_STEPS": "3",  # however many corrections the clients sent
            "SELFTUNE_TRAIN__MIN_EPOCHS": "1",
            "SELFTUNE_TRAIN__MIN_NEW_EXAMPLES": "1",
            "SELFTUNE_JOBS__STALE_SECONDS": "2",
            "SELFTUNE_JOBS__MAX_ATTEMPTS": "1000",  # kills are not the job's fault
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.database = database or f"sqlite:///{(self.data / 'selftune.db').resolve()}"
        if database:
            self.env["SELFTUNE_DATABASE_URL"] = database
        self.log = (root / "server.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.started = False  # once: later failures to start are failures, not a skip

    def spawn(self, command: str = "worker", **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "selftune", command],
            env={**self.env, **env},
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,  # killed as a group: the server and its worker
            preexec_fn=die_with_parent,
        )

    def start_server(self, worker: bool = True, timeout: float = 120) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.process = self.spawn(
            "serve",
            SELFTUNE_SERVE__PORT=str(port),
            SELFTUNE_SERVE__START_WORKER="true" if worker else "false",
        )
        deadline = time.monotonic() + timeout
        failure = ServeUnavailable if not self.started else RuntimeError
        while True:
            if self.process.poll() is not None:
                raise failure(f"selftune serve exited with {self.process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    self.started = True
                    return
            if time.monotonic() > deadline:
                self.kill_server()
                raise failure(f"the server did not start in {timeout:.0f} s")
            time.sleep(0.1)

    def kill_server(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        # Until the group is gone: a worker the server was forking meanwhile is killed too, and
        # no process of the old server writes while the store is checked.
        for _ in range(100):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.process = None

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base_url}{path}", timeout=60, **kwargs)

    def close(self) -> None:
        if self.process is not None:
            self.kill_server()
        self.log.close()


def check_store(store: Store, acked: Acked, report: Report) -> None:
    """Nothing acknowledged lost, no corruption: run with the server down."""
    integrity = store.integrity()
    if integrity != "ok":
        report.integrity_failures += 1
        report.fail(f"integrity_check: {integrity[:200]}")
    with acked.lock:
        chats, feedback = dict(acked.chats), dict(acked.feedback)
    stored = dict(store.rows("SELECT id, response FROM interactions"))
    for interaction, answer in chats.items():
        if interaction not in stored:
            report.lost += 1
            report.fail(f"acknowledged chat {interaction} is not in the store")
        elif stored[interaction] != answer:
            report.wrong_answer += 1
            report.fail(f"chat {interaction}: stored {stored[interaction]!r}, sent {answer!r}")
    kept = dict(store.rows("SELECT id, interaction_id FROM feedback"))
    for feedback_id, interaction in feedback.items():
        if kept.get(feedback_id) != interaction:
            report.lost += 1
            report.fail(f"acknowledged feedback {feedback_id} is not in the store")
    # A version the store lists (and so the API serves) has its complete folder.
    for name, path in store.rows("SELECT name, path FROM versions"):
        try:
            verify_manifest(Path(path))
        except (ArtifactError, ValueError) as exc:
            report.incomplete_artifacts += 1
            report.fail(f"version {name} is listed but incomplete: {exc}")


def check_artifacts(data: Path, report: Report) -> None:
    """Every artifact folder under its final name is complete (its manifest verifies)."""
    folders = []
    versions = data / "versions"
    if versions.is_dir():
        folders += [p for p in versions.iterdir() if p.is_dir()]
    exports = data / "exports"
    if exports.is_dir():
        folders += [f for v in exports.iterdir() if v.is_dir() for f in v.iterdir() if f.is_dir()]
    for folder in folders:
        if folder.name.startswith(".tmp-"):
            continue  # never read; removed by the next worker
        try:
            verify_manifest(folder)
        except (ArtifactError, ValueError) as exc:
            report.incomplete_artifacts += 1
            report.fail(f"incomplete artifact visible: {exc}")


def _train_if_idle(harness: Harness, store: Store) -> None:
    if not store.rows(PENDING):
        harness.api("POST", "/api/train")  # 400 while there is nothing to learn: fine


def server_kills(
    harness: Harness, store: Store, report: Report, kills: int, clients: int, rng: random.Random
) -> Acked:
    acked = Acked()
    for kill in range(kills):
        harness.start_server()
        if kill % 5 == 0:
            with contextlib.suppress(httpx.HTTPError):
                _train_if_idle(harness, store)
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_client,
                args=(harness.base_url, n, acked, stop, rng.randrange(1 << 30)),
                daemon=True,
            )
            for n in range(clients)
        ]
        for thread in threads:
            thread.start()
        # Mostly at once, under load; one round in ten long enough for the worker to load and
        # take up the training job, so that kills land in training too.
        time.sleep(rng.uniform(8, 20) if kill % 10 == 9 else rng.uniform(0.2, 3.0))
        harness.kill_server()  # mid-request, mid-commit, mid-training: wherever it is
        report.kills += 1
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        check_store(store, acked, report)
        check_artifacts(harness.data, report)
        report.chats_acknowledged = len(acked.chats)
        report.feedback_acknowledged = len(acked.feedback)
        print(
            f"kill {report.kills}: {report.chats_acknowledged} chats and "
            f"{report.feedback_acknowledged} feedback acknowledged so far, "
            f"lost {report.lost}, integrity failures {report.integrity_failures}",
            flush=True,
        )
    return acked


def _watch_and_kill(
    worker: subprocess.Popen[bytes], parent: Path, done: Callable[[], bool], rng: random.Random
) -> bool:
    """SIGKILL ``worker`` a random few milliseconds after a ``.tmp-`` folder appears in
    ``parent`` (an artifact being written); False if ``done()`` came first."""
    last_look = 0.0
    while True:
        if parent.is_dir() and any(p.name.startswith(".tmp-") for p in parent.iterdir()):
            time.sleep(rng.uniform(0, 0.05))
            worker.kill()
            worker.wait()
            return True
        now = time.monotonic()
        if now - last_look > 0.5:  # the store is read less often than the folder
            last_look = now
            if done() or worker.poll() is not None:
                return False
        time.sleep(0.001)


def _job(store: Store, job_id: int) -> tuple[str, int, Any]:
    status, attempts, result = store.rows(
        "SELECT status, attempts, result FROM jobs WHERE id = :id", id=job_id
    )[0]
    return status, attempts, result


def _ended(store: Store, job_id: int) -> bool:
    return _job(store, job_id)[0] in TERMINAL


def _wait_job(store: Store, job_id: int, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (status := _job(store, job_id)[0]) not in TERMINAL:
        if time.monotonic() > deadline:
            return status
        time.sleep(0.25)
    return status


def worker_kills(
    harness: Harness, store: Store, report: Report, kills: int, rng: random.Random
) -> None:
    """Kill the worker alone while it saves a version, then while it writes an export."""
    harness.start_server(worker=False)
    # First a worker takes up and finishes what the server kills interrupted, so that each
    # kill below lands in the job it is meant for.
    worker: subprocess.Popen[bytes] | None = harness.spawn()
    try:
        deadline = time.monotonic() + 300
        while store.rows(PENDING) and time.monotonic() < deadline:
            time.sleep(0.25)
        for kill in range(kills):
            exporting = kill % 2 == 1
            if exporting:
                versions = store.rows("SELECT name FROM versions ORDER BY id DESC")
                if not versions:
                    continue
                name = versions[0][0]
                fmt = ("f16", "q8_0", "f32", "q4_k_m")[(kill // 2) % 4]
                response = harness.api("POST", f"/api/versions/{name}/export", json={"format": fmt})
                if response.status_code == 200:  # exported already
                    continue
                response.raise_for_status()
                job_id = response.json()["job_id"]
                watched = harness.data / "exports" / name
            else:
                response = harness.api("POST", "/api/train", json={"reason": "kill loop"})
                response.raise_for_status()
                job_id = response.json()["job_id"]
                watched = harness.data / "versions"
            # The worker that finished the last round's job (loaded: no start to wait for) or
            # a new one; killed a few milliseconds into writing the job's artifact.
            worker = worker if worker is not None and worker.poll() is None else harness.spawn()
            killed = _watch_and_kill(worker, watched, functools.partial(_ended, store, job_id), rng)
            if killed:
                report.worker_kills += 1
            else:
                report.worker_kills_missed += 1
            check_artifacts(harness.data, report)
            check_store(store, Acked(), report)
            # A new worker takes the interrupted job up again and finishes it.
            if worker.poll() is not None:
                worker = harness.spawn()
            status = _wait_job(store, job_id)
            attempts = _job(store, job_id)[1]
            what = "export" if exporting else "save"
            print(
                f"worker kill {kill + 1} ({what}): {'killed' if killed else 'missed'}, "
                f"job {job_id} {status} after {attempts} attempts",
                flush=True,
            )
            if status != "succeeded":
                report.jobs_unfinished += 1
                report.fail(f"job {job_id} ({what}) is {status}")
            leftovers = [p for p in watched.iterdir() if p.name.startswith(".tmp-")]
            if leftovers:
                report.incomplete_artifacts += 1
                report.fail(f"half-written folders not removed by the next worker: {leftovers}")
            check_artifacts(harness.data, report)
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=60)
        harness.kill_server()


def finish_jobs(harness: Harness, store: Store, report: Report, timeout: float = 300) -> None:
    """An undisturbed server and worker bring every interrupted job to an end."""
    if store.rows(PENDING):
        harness.start_server()
    try:
        deadline = time.monotonic() + timeout
        while store.rows(PENDING):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        if harness.process is not None:
            harness.kill_server()
    for job_id, kind, status, error in store.rows("SELECT id, kind, status, error FROM jobs"):
        if status != "succeeded":
            report.jobs_unfinished += 1
            report.fail(f"job {job_id} ({kind}) is {status}: {error}")
    report.jobs_recovered = len(store.rows("SELECT id FROM events WHERE kind = 'job_recovered'"))
    check_artifacts(harness.data, report)


@contextlib.contextmanager
def _folder(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="selftune-kill-loop-") as tmp:
            yield Path(tmp)


def run(
    kills: int,
    *,
    worker_kill_count: int = 4,
    clients: int = 4,
    database: str | None = None,
    seed: int = 0,
    folder: str | None = None,
) -> Report:
    rng = random.Random(seed)
    report = Report()
    began = time.perf_counter()
    with _folder(folder) as root:
        gguf = make_tiny_gguf(root)
        harness = Harness(root, gguf, database)
        store = Store(harness.database)
        try:
            server_kills(harness, store, report, kills, clients, rng)
            worker_kills(harness, store, report, worker_kill_count, rng)
            finish_jobs(harness, store, report)
        finally:
            harness.close()
            store.engine.dispose()
    report.seconds = time.perf_counter() - began
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="server kills (default 200)")
    parser.add_argument(
        "--worker-kills", type=int, default=4, help="worker kills, save and export in turn"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--database", help="a SQLAlchemy URL of an empty database (PostgreSQL)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", help="keep the data folder and server.log here")
    args = parser.parse_args(argv)
    report = run(
        args.kills,
        worker_kill_count=args.worker_kills,
        clients=args.clients,
        database=args.database,
        seed=args.seed,
        folder=args.folder,
    )
    print(report.text("PostgreSQL" if args.database else "SQLite"))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
