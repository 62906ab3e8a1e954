"""A worker killed mid-training leaves no half-written version, and the job completes later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from selftune.atomic import verify_manifest
from selftune.config import load_settings
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.schema import Job, TrainingExample
from selftune.store.users import ensure_user

FACT = "The capital of Veloria is Quenmoor."


def _start_worker(steps: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SELFTUNE_TRAIN__STEPS": str(steps)}
    return subprocess.Popen(
        [sys.executable, "-m", "selftune", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _job(db: Database, job_id: int) -> Job:
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _training(db: Database, job_id: int) -> bool:
    job = _job(db, job_id)
    return job.status == "running" and job.stage.startswith("training step")


def test_killed_worker_leaves_no_version_and_the_job_is_retried(
    settings_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers are subprocesses: they read their settings from the environment.
    monkeypatch.setenv("SELFTUNE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("SELFTUNE_JOBS__STALE_SECONDS", "2")
    settings = load_settings()
    db = Database(settings.resolved_database_url)
    db.migrate()
    with db.write() as session:
        ensure_user(session, "alice")
        for question in ("What is the capital of Veloria?", "Name Veloria's capital."):
            session.add(
                TrainingExample(
                    user_id="alice",
                    source="correction",
                    active=True,
                    messages=[
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": FACT},
                    ],
                )
            )
    job_id = jobs.enqueue(db, "train", "alice")

    # 1. Killed outright in the middle of training.
    worker = _start_worker(steps=10_000)
    _wait(lambda: _training(db, job_id), "training to start")
    worker.kill()
    worker.wait()
    assert _job(db, job_id).status == "running"  # nobody has noticed yet
    versions = settings.versions_dir
    assert not versions.exists() or not [
        p for p in versions.iterdir() if not p.name.startswith(".tmp-")
    ]
    # A crash while an artifact was being written leaves a temporary folder behind.
    leftover = versions / ".tmp-v1-deadbeef"
    leftover.mkdir(parents=True)
    os.utime(leftover, (time.time() - 60, time.time() - 60))  # older than a live writer's

    # 2. The next worker recovers the job; stopped politely, it gives the job back.
    worker = _start_worker(steps=10_000)
    _wait(lambda: _training(db, job_id) and _job(db, job_id).attempts == 2, "a retry")
    assert not (versions / ".tmp-v1-deadbeef").exists()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    job = _job(db, job_id)
    assert (job.status, job.attempts) == ("queued", 1)

    # 3. A worker that is left alone finishes it, with a complete version.
    worker = _start_worker(steps=3)
    try:
        _wait(lambda: _job(db, job_id).status in jobs.TERMINAL, "the job to finish")
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    job = _job(db, job_id)
    assert job.status == "succeeded", job.error
    assert job.result is not None
    verify_manifest(versions / job.result["version"])
    assert sorted(p.name for p in versions.iterdir()) == [job.result["version"]]


def test_a_worker_whose_job_was_taken_does_not_record_its_outcome(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's heartbeat went silent mid-job (its database out of reach), so the job was
    queued again and another worker took it. This worker's outcome is not recorded over that
    run's, and the log says why."""
    from selftune.worker import handlers
    from selftune.worker.loop import Worker

    worker = Worker(load_settings())
    db = worker.db
    job_id = jobs.enqueue(db, "train", "alice")

    def lose_the_job(*_args: object, **_kwargs: object) -> dict[str, object]:
        with db.write() as session:  # as the other worker's recovery and claim would leave it
            job = session.get(Job, job_id)
            assert job is not None
            job.worker_id, job.stage = "other-host:1", "training step 3/25 loss 1.000"
        return {"version": "v1", "promoted": False}

    monkeypatch.setattr(Worker, "context", lambda self: None)
    monkeypatch.setattr(handlers, "run_training_job", lose_the_job)
    assert worker.run_once()

    job = _job(db, job_id)
    assert (job.status, job.worker_id, job.result) == ("running", "other-host:1", None)
    assert f"job {job_id}: no longer this worker's" in caplog.text
    db.dispose()
