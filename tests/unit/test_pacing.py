"""Pause-on-inference: the server's activity file, read by the worker, and the pacer's
decisions on a fake clock: it pauses while requests are in flight, resumes after the idle time,
keeps training's minimum share, and still honours a cancel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from selftune.api.activity import ServingActivity
from selftune.api.overload import Admission
from selftune.autopilot.pacing import (
    ACTIVITY_LAYOUT,
    IDLE,
    LOOK_SECONDS,
    Activity,
    Pacer,
    read_activity,
)
from selftune.config import AutopilotSettings, load_settings
from selftune.store.jobs import JobCancelled
from selftune.worker.loop import worker_threads


def test_admission_tells_the_worker_how_many_requests_are_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "serving-activity"
    activity = ServingActivity(path)
    admission = Admission(queued=2, on_change=activity.changed)
    assert read_activity(path) == IDLE
    first = admission.enter()
    second = admission.enter()
    assert read_activity(path).in_flight == 2
    admission.leave(first, served=True)
    assert read_activity(path) == Activity(1, 0.0)
    before = time.monotonic()
    admission.leave(second, served=False)
    now = read_activity(path)
    assert now.in_flight == 0 and before <= now.last_ended <= time.monotonic()
    activity.close()
    activity.changed(3)  # a stream dropped after the app stopped: ignored
    assert read_activity(path).in_flight == 0


def test_no_file_or_a_dead_server_means_idle(tmp_path: Path) -> None:
    path = tmp_path / "serving-activity"
    assert read_activity(path) == IDLE
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    path.write_bytes(ACTIVITY_LAYOUT.pack(2, 1, 5.0, int(ended.stdout)))
    assert read_activity(path) == IDLE  # its server died mid-request: no pause behind it
    path.write_bytes(ACTIVITY_LAYOUT.pack(2, 1, 5.0, os.getpid()))
    assert read_activity(path) == Activity(1, 5.0)


class _Clock:
    """A fake monotonic clock; sleeping advances it and runs ``on_sleep``."""

    def __init__(self) -> None:
        self.now = 100.0
        self.on_sleep: Callable[[], None] = lambda: None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_sleep()


def _pacer(
    clock: _Clock, activity: list[Activity], **policy: object
) -> tuple[Pacer, list[tuple[float, str]]]:
    """A pacer reading ``activity[0]``, and the reports its paced callback passed on."""
    settings = AutopilotSettings.model_validate(
        {"resume_idle_seconds": 1.0, "min_train_share": 0.0, **policy}
    )
    pacer = Pacer(lambda: activity[0], lambda: settings, clock=clock, sleep=clock.sleep)
    return pacer, []


def test_training_pauses_while_a_request_is_in_flight_and_resumes_after_the_idle_time() -> None:
    clock = _Clock()
    activity = [Activity(in_flight=1)]
    pacer, reports = _pacer(clock, activity)
    sleeps = []

    def request_ends_after_three_looks() -> None:
        sleeps.append(clock.now)
        if len(sleeps) == 3:
            activity[0] = Activity(0, clock.now)

    clock.on_sleep = request_ends_after_three_looks
    report = pacer.paced(lambda progress, stage: reports.append((progress, stage)))
    report(0.5, "training step 1/2")
    # Three looks in flight, then a second of idle time before it resumes.
    assert pacer.paused == pytest.approx(3 * LOOK_SECONDS + 1.0, abs=LOOK_SECONDS + 1e-9)
    assert reports[0] == (0.5, "training step 1/2")
    assert reports[1] == (0.5, "paused for serving (1 request in flight): training step 1/2")
    assert reports[4][1].startswith("paused for serving (last request 0.0s ago)")
    assert reports[-1] == (0.5, "training step 1/2")  # the stage back once it resumes


def test_an_idle_server_or_pausing_off_never_waits() -> None:
    clock = _Clock()
    pacer, reports = _pacer(clock, [Activity(0, clock.now - 2.0)])
    pacer.paced(lambda p, s: reports.append((p, s)))(0.1, "building dataset")
    assert reports == [(0.1, "building dataset")] and pacer.paused == 0

    read: list[int] = []

    def busy() -> Activity:
        read.append(1)
        return Activity(1)

    settings = AutopilotSettings.model_validate({"pause_on_inference": False})
    off = Pacer(busy, lambda: settings, clock=clock)
    assert not off.wait(lambda why: None)
    assert read == []  # not even the file is read


def test_training_keeps_its_minimum_share_under_steady_traffic() -> None:
    clock = _Clock()
    pacer, _ = _pacer(clock, [Activity(in_flight=1)], min_train_share=0.2)
    clock.now += 1.0  # a step of a second, then a report
    pacer.wait(lambda why: None)
    # Paused until training's share fell to 0.2: 4 s paused for 1 s trained.
    assert pacer.paused == pytest.approx(4.0, abs=LOOK_SECONDS)
    for _ in range(10):  # step, wait, step, ...: the share holds over the job
        clock.now += 1.0
        pacer.wait(lambda why: None)
    ran = clock.now - pacer.started
    assert (ran - pacer.paused) / ran == pytest.approx(0.2, abs=0.02)


def test_a_cancel_is_honoured_while_paused() -> None:
    clock = _Clock()
    pacer, _ = _pacer(clock, [Activity(in_flight=1)])
    calls = []

    def report(progress: float, stage: str) -> None:
        calls.append(stage)
        if len(calls) == 3:
            raise JobCancelled("job 1 was cancelled")

    with pytest.raises(JobCancelled):
        pacer.paced(report)(0.3, "training step 1/4")
    assert pacer.paused == pytest.approx(LOOK_SECONDS)


def test_the_worker_keeps_half_the_threads_by_default(settings_env: Path) -> None:
    assert worker_threads(load_settings(threads=4)) == 2
    assert worker_threads(load_settings(threads=1)) == 1
    assert worker_threads(load_settings(threads=4, jobs={"worker_threads": 3})) == 3
