"""The worker process: takes jobs from the store and runs them. It never serves requests.

Each job runs through the handler of its kind (``selftune.worker.handlers``): training, exports,
and whatever kinds join that table later.

On start it removes half-written artifacts and queues again the jobs of workers that died. A
heartbeat thread keeps the running job's heartbeat fresh and passes cancellation requests on;
another keeps the worker's presence row fresh with what it is doing, from loading the model to
stopping. On SIGTERM/SIGINT the running job is put back in the queue for the next worker.

Jobs come first: the worker takes them as soon as the model and the base's figures are loaded,
and compiles the training step (``train.compile``) one batch shape at a time while it has none.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from types import FrameType
from typing import Any

from selftune.atomic import remove_incomplete
from selftune.config import Settings
from selftune.engines.factory import build_engine
from selftune.models.base import materialize, resolve_base_model
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.jobs import JobCancelled, JobFailed, JobLost
from selftune.store.workers import PRESENCE_SECONDS, mark_worker
from selftune.training.device import (
    TrainingDeviceError,
    check_training_settings,
    describe_precision,
)
from selftune.training.pipeline import TrainingContext
from selftune.worker.handlers import HANDLERS, JobRun

__all__ = [
    "Worker",
    "WorkerSettingsError",
    "check_worker_settings",
    "run_worker",
    "worker_threads",
]

log = logging.getLogger(__name__)


TIMESTEP_CHECK_SECONDS = 30.0  # how often an idle worker looks for due connectors

WorkerSettingsError = TrainingDeviceError  # the settings ask for what this machine cannot do


def check_worker_settings(settings: Settings) -> None:
    """Raise :class:`WorkerSettingsError` when this machine cannot train as the settings ask
    (a GPU that is not there, 4-bit bases without bitsandbytes, ...), before anything starts."""
    check_training_settings(
        settings.train.device,
        settings.train.quantization,
        settings.train.compile,
        precision_setting=settings.train.precision,
        onednn_products=settings.train.onednn_products,
    )


class _Stop(BaseException):
    """Raised in the main thread by a termination signal."""


class _Heartbeat(threading.Thread):
    def __init__(self, db: Database, job_id: int, every: float, worker_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.db, self.job_id, self.every, self.worker_id = db, job_id, every, worker_id
        self.progress, self.stage = 0.0, "starting"
        self.cancelled = False
        self._done = threading.Event()

    def update(self, progress: float, stage: str) -> None:
        self.progress, self.stage = progress, stage
        if self.cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def run(self) -> None:
        while not self._done.wait(self.every):
            try:
                self.cancelled = jobs.report(
                    self.db, self.job_id, self.progress, self.stage, worker_id=self.worker_id
                )
            except Exception:  # a busy database must not kill the job; the next beat retries
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._done.set()
        self.join()


class _Presence(threading.Thread):
    """Keeps the worker's presence row fresh with its :attr:`state` ("starting", "compiling",
    "ready", "busy"), so that a worker loading or compiling for minutes is seen alive and one
    that died is not."""

    def __init__(self, db: Database, worker_id: str, every: float = PRESENCE_SECONDS / 2) -> None:
        super().__init__(daemon=True, name="presence")
        self.db, self.worker_id, self.every = db, worker_id, every
        self.state = "starting"
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            try:
                mark_worker(self.db, self.worker_id, self.state)
            except Exception:  # the next beat retries
                log.warning("marking worker %s present failed", self.worker_id, exc_info=True)
            if self._done.wait(self.every):
                return

    def stop(self) -> None:
        """Stop beating; the caller marks the final state, which no late beat overwrites."""
        self._done.set()
        self.join()


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url)
        self.db.migrate()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._context: TrainingContext | None = None
        self._swept = False
        self.presence = _Presence(self.db, self.worker_id)
        self._next_timestep_check = 0.0  # time.monotonic() of the next look
        self._next_summary_check = 0.0  # the next look for stale memory summaries
        self._next_autopilot_check = 0.0  # the next look at the autopilot's triggers

    def context(self) -> TrainingContext:
        if self._context is None:
            source = resolve_base_model(self.settings.base_model)
            base_dir = materialize(source, self.settings.cache_dir)
            # The engine that serves: the gate judges versions as they will be served.
            engine = build_engine(self.settings, source, base_dir, own_thread=False)
            self._context = TrainingContext(self.settings, self.db, source, base_dir, engine)
        return self._context

    def recover(self) -> None:
        if not self._swept:  # once: a crash left them; live writers' folders are young
            self._swept = True
            # Versions, and exports (<exports_dir>/<version>/.tmp-<format>-...), which a worker
            # killed mid-export leaves behind: a merged GGUF is as large as the model.
            stale = self.settings.jobs.stale_seconds
            removed = remove_incomplete(self.settings.versions_dir, older_than=stale)
            exports = self.settings.exports_dir
            for folder in sorted(exports.iterdir()) if exports.is_dir() else ():
                if folder.is_dir():
                    removed += remove_incomplete(folder, older_than=stale)
            if removed:
                log.warning("removed %d half-written artifacts: %s", len(removed), removed)
        recovered = jobs.recover_stale(
            self.db, self.settings.jobs.stale_seconds, self.settings.jobs.max_attempts
        )
        if recovered:
            log.warning("recovered jobs of a worker that stopped: %s", recovered)

    def run_once(self) -> bool:
        """Run one queued job if there is one; returns whether a job was run."""
        self.recover()
        job = jobs.claim(self.db, self.worker_id)
        if job is None:
            return False
        log.info("job %s (%s): started (attempt %s)", job.id, job.kind, job.attempts)
        idle_state, self.presence.state = self.presence.state, "busy"
        every = min(2.0, self.settings.jobs.stale_seconds / 4)
        beat = _Heartbeat(self.db, job.id, every, self.worker_id)
        beat.start()
        try:
            try:
                handler = HANDLERS.get(job.kind)
                if handler is None:
                    raise JobFailed(
                        f"no handler for jobs of kind {job.kind!r} in this selftune; upgrade "
                        f"the worker or cancel the job (kinds handled: {sorted(HANDLERS)})"
                    )
                result = handler(JobRun(self, job.id, dict(job.params or {}), beat.update))
            finally:
                beat.stop()  # before the final write, so no late beat follows it
        except _Stop:
            jobs.requeue(self.db, job.id, "the worker was stopped", worker_id=self.worker_id)
            raise
        except JobLost as exc:  # the job's record is the other run's to write
            log.warning("job %s: %s; this run's outcome is not recorded", job.id, exc)
        except JobCancelled as exc:
            self._finish(job.id, "cancelled", error=str(exc))
        except JobFailed as exc:
            self._finish(job.id, "failed", error=str(exc), result=exc.figures)
        except Exception as exc:
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self._finish(job.id, "failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job.id, "succeeded", result=result)
        self.presence.state = idle_state
        if job.kind == "train":
            self._troubleshoot(job.id)
        return True

    def _troubleshoot(self, job_id: int) -> None:
        """Let the troubleshooter diagnose a finished training job; its failure is logged,
        never the worker's."""
        from selftune.autopilot.troubleshooter import after_training_job

        try:
            after_training_job(self.settings, self.db, job_id)
        except Exception:
            log.error("the troubleshooter failed on job %s:\n%s", job_id, traceback.format_exc())

    def work_once(self) -> bool:
        """Run a queued job, or else compile the training step for one more batch shape;
        returns whether there was anything to do."""
        if self.run_once():
            return True
        if self._queue_due_connectors() or self._queue_stale_summaries() or self._run_autopilot():
            return True
        context = self.context()
        if context.compile_pending:
            self.presence.state = "compiling"
            if context.compile_next():
                return True
        self.presence.state = "ready"
        return False

    def _queue_due_connectors(self) -> bool:
        """Queue a timestep job for each connector that is due (at most every
        ``TIMESTEP_CHECK_SECONDS``: a read of the jobs table); whether any was queued."""
        from selftune.connectors.schedule import queue_due

        now = time.monotonic()
        if now < self._next_timestep_check:
            return False
        self._next_timestep_check = now + TIMESTEP_CHECK_SECONDS
        return bool(queue_due(self.settings, self.db))

    def _queue_stale_summaries(self) -> bool:
        """Queue a memory_summary job for each channel summary whose records changed, every
        ``memory.summary_interval_hours`` (0: never); whether any was queued."""
        from selftune.connectors.schedule import training_runs
        from selftune.memory.summaries import queue_stale

        memory = self.settings.memory
        now = time.monotonic()
        if not (memory.enabled and memory.summary_interval_hours) or now < self._next_summary_check:
            return False
        self._next_summary_check = now + memory.summary_interval_hours * 3600
        if training_runs(self.db):  # the next look queues them
            self._next_summary_check = now + TIMESTEP_CHECK_SECONDS
            return False
        return bool(queue_stale(self.db))

    def _run_autopilot(self) -> bool:
        """Every ``autopilot.check_seconds``: roll back a promotion whose feedback regressed,
        then queue a training job if a trigger fires; whether anything was done."""
        from selftune.autopilot.scheduler import tick
        from selftune.autopilot.troubleshooter import watch_served

        now = time.monotonic()
        if now < self._next_autopilot_check:
            return False
        self._next_autopilot_check = now + self.settings.autopilot.check_seconds
        try:
            rolled_back = watch_served(self.settings, self.db)
            queued = tick(self.settings, self.db)
        except Exception:
            log.error("the autopilot failed:\n%s", traceback.format_exc())
            return False
        if rolled_back is not None:
            log.warning("autopilot: rolled back version %s for its feedback", rolled_back)
        if queued is not None:
            log.info("autopilot: queued training job %s", queued)
        return rolled_back is not None or queued is not None

    def _finish(self, job_id: int, status: str, **outcome: Any) -> None:
        if jobs.finish(self.db, job_id, status, worker_id=self.worker_id, **outcome):
            log.info("job %s: %s", job_id, status)
        else:  # its heartbeat went stale and the job was queued again: the next run counts
            log.warning(
                "job %s: no longer this worker's (queued again while its heartbeat was silent); "
                "this run's outcome (%s) is not recorded",
                job_id,
                status,
            )

    def run_forever(self) -> None:
        while True:
            if not self.work_once():
                time.sleep(self.settings.jobs.poll_seconds)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _yield_cpu_to_serving(niceness: int) -> None:
    """Lower this process's CPU priority: answering requests is latency-critical, training is not.

    Both llama.cpp (serving, and the gate's evaluation here) and PyTorch use every core. ggml's
    threads spin at barriers, so two busy llama.cpp processes at equal priority on 2 cores
    starve each other's threads: decoding fell from 58 to 0.6 tokens/s. At niceness 10 the
    server kept 46-50 tokens/s while the worker trained or evaluated.
    """
    current = os.nice(0)
    if niceness > current:
        os.nice(niceness - current)


def worker_threads(settings: Settings) -> int:
    """The worker's thread budget (``jobs.worker_threads``; 0: half of ``threads`` or of the
    cores, at least 1).

    Training and llama.cpp decoding both on 2 threads of 2 cores took decoding from about 105
    to 25 tokens/s: PyTorch's and ggml's threads spin at barriers, and a thread of each per
    core starves the other. With one thread each, decoding kept about 92.
    """
    if settings.jobs.worker_threads:
        return settings.jobs.worker_threads
    return max(1, (settings.threads or len(os.sched_getaffinity(0))) // 2)


def run_worker(settings: Settings) -> None:
    _yield_cpu_to_serving(settings.jobs.worker_niceness)
    # torch.compile's kernels (train.compile) are kept with the other derived data, so that a
    # restart, even after a reboot cleared /tmp, reuses them instead of compiling again.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.cache_dir / "torchinductor"))
    import torch

    threads = worker_threads(settings)
    torch.set_num_threads(threads)
    # Its llama.cpp engine (the gate's answers, exports' checks) keeps to the budget too.
    settings = settings.model_copy(update={"threads": threads})
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    worker = Worker(settings)
    worker.presence.start()
    try:
        # Load the model, the base model's probe answers and figures now, not in the first job.
        context = worker.context()
        context.warm_up(compile_step=False)
        config = context.train_config()
        log.info(
            "training on %s in %s",
            config.device,
            describe_precision(config.device, config.bf16, config.onednn_products),
        )
        worker.presence.state = "compiling" if context.compile_pending else "ready"
        log.info("worker %s taking jobs", worker.worker_id)
        worker.run_forever()
    except _Stop as stop:
        log.info("worker stopped by %s", stop)
    finally:
        worker.presence.stop()
        mark_worker(worker.db, worker.worker_id, "stopped")
        worker.db.dispose()
