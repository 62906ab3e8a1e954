"""Pause-on-inference: training waits between steps while the server answers chats.

The server counts its generation requests in flight in a small shared file under the data
folder (``selftune.api.activity`` writes it on every admission and leave; no store write per
request). A :class:`Pacer` reads it at each of a job's report points, once per optimizer step,
and while requests are in flight, or the last one ended less than
``autopilot.resume_idle_seconds`` ago, it waits in short sleeps. It keeps reporting meanwhile,
so a cancel is honoured and the stage says why the job waits; the heartbeat thread keeps the job
fresh. It never pauses more than ``1 - autopilot.min_train_share`` of the job's time, so a long
job under steady traffic still finishes.

The file is the server's only to write; it holds a sequence number (odd while a write is under
way, so a reader retries rather than take a torn record), the requests in flight, when the last
one ended (``time.monotonic()``, one clock for every process of the machine) and the server's
pid (a server that died mid-request leaves no pause behind).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from selftune.autopilot.control import current
from selftune.config import AutopilotSettings, Settings
from selftune.store.db import Database

__all__ = [
    "ACTIVITY_FILE",
    "ACTIVITY_LAYOUT",
    "Activity",
    "Pacer",
    "pacer_for",
    "pause_reason",
    "read_activity",
]

log = logging.getLogger(__name__)

ACTIVITY_FILE = "serving-activity"  # under the data folder
# (sequence, requests in flight, monotonic time the last one ended, server pid), little-endian.
ACTIVITY_LAYOUT = struct.Struct("<Qqdq")
_READ_TRIES = 8  # sequence reads before taking what is there: a write is a few microseconds

LOOK_SECONDS = 0.2  # how often a paused job looks again: the resume's delay at most
POLICY_SECONDS = 5.0
# The stages a job computes in (a training step, the gate's evaluation), paced before each.
_COMPUTING = (
    "training",
    "second attempt",
    "evaluating",
)  # how often a job reads the autopilot settings again (a store read)


@dataclasses.dataclass(frozen=True)
class Activity:
    """What the server was doing at the last write: requests in flight, and when
    (``time.monotonic()``) the last one ended; 0.0: none ended since it started."""

    in_flight: int = 0
    last_ended: float = 0.0


IDLE = Activity()


def read_activity(path: Path) -> Activity:
    """The server's activity as its file says; :data:`IDLE` when there is no file, or its
    server is gone."""
    try:
        with path.open("rb") as file:
            for _ in range(_READ_TRIES):
                file.seek(0)
                raw = file.read(ACTIVITY_LAYOUT.size)
                if len(raw) < ACTIVITY_LAYOUT.size:
                    return IDLE
                sequence, in_flight, last_ended, pid = ACTIVITY_LAYOUT.unpack(raw)
                file.seek(0)
                if sequence % 2 == 0 and file.read(8) == raw[:8]:
                    break
    except OSError:
        return IDLE
    if not _alive(pid):
        return IDLE
    return Activity(max(0, in_flight), last_ended)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def pause_reason(
    activity: Activity, policy: AutopilotSettings, now: float, ran: float, paused: float
) -> str | None:
    """Why a job that ``ran`` seconds so far, ``paused`` of them, waits now for serving;
    None: it goes on (nothing in flight for ``resume_idle_seconds``, or its minimum share)."""
    if not policy.pause_on_inference:
        return None
    if activity.in_flight:
        reason = f"{activity.in_flight} request{'s' if activity.in_flight > 1 else ''} in flight"
    elif activity.last_ended and now - activity.last_ended < policy.resume_idle_seconds:
        reason = f"last request {now - activity.last_ended:.1f}s ago"
    else:
        return None
    # Training keeps min_train_share of the job's time: below it, the job steps.
    share = policy.min_train_share
    if share and ran - paused < share * ran:
        return None
    return reason


class Pacer:
    """Paces one job: :meth:`paced` wraps its report callback so that each report waits while
    serving is busy. :attr:`paused` sums the seconds it waited."""

    def __init__(
        self,
        activity: Callable[[], Activity],
        policy: Callable[[], AutopilotSettings],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.activity, self.policy = activity, policy
        self.clock, self.sleep = clock, sleep
        self.started = clock()
        self.paused = 0.0
        self._policy: AutopilotSettings | None = None
        self._policy_read = 0.0

    def paced(self, report: Callable[[float, str], None]) -> Callable[[float, str], None]:
        """``report``, which then waits for serving (reporting "paused for serving" meanwhile,
        so that a cancel still raises from it) before it returns."""

        def paced_report(progress: float, stage: str) -> None:
            report(progress, stage)
            if not stage.startswith(_COMPUTING):  # saving, promoting: short, and a delay
                return  # there only keeps the learned version from being served
            if self.wait(lambda why: report(progress, f"paused for serving ({why}): {stage}")):
                report(progress, stage)

        return paced_report

    def wait(self, still: Callable[[str], None]) -> bool:
        """Wait while :func:`pause_reason` gives one, calling ``still(reason)`` at each look;
        whether it waited."""
        waited = False
        while True:
            now = self.clock()
            policy = self._current_policy(now)
            if not policy.pause_on_inference:  # no file read when it is off
                return waited
            reason = pause_reason(self.activity(), policy, now, now - self.started, self.paused)
            if reason is None:
                return waited
            still(reason)
            self.sleep(LOOK_SECONDS)
            self.paused += self.clock() - now
            waited = True

    def _current_policy(self, now: float) -> AutopilotSettings:
        if self._policy is None or now - self._policy_read >= POLICY_SECONDS:
            try:
                self._policy = self.policy()
            except Exception:  # a busy store: the last settings read, or the file's
                log.warning("reading the autopilot settings failed", exc_info=True)
                if self._policy is None:
                    raise
            self._policy_read = now
        return self._policy


def pacer_for(settings: Settings, db: Database) -> Pacer:
    """The pacer of a job run by a worker with ``settings``: it reads the activity file of the
    server of the same data folder, and the autopilot settings in effect."""
    path = settings.data_dir / ACTIVITY_FILE

    def policy() -> AutopilotSettings:
        with db.read() as session:
            return current(settings, session)

    return Pacer(lambda: read_activity(path), policy)
