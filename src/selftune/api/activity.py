"""The server's side of pause-on-inference: how many generation requests are in flight, and
when the last one ended, in a small file the worker reads (``selftune.autopilot.pacing``).

:class:`Admission` calls :meth:`ServingActivity.changed` on every enter and leave, under its
lock: a 32-byte write into a memory-mapped file, no system call and no store write, so it can
sit on every request's path.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from pathlib import Path

from selftune.autopilot.pacing import ACTIVITY_FILE, ACTIVITY_LAYOUT

__all__ = ["ServingActivity", "open_activity"]

log = logging.getLogger(__name__)

_SEQUENCE = 8  # bytes of the sequence number, at the record's start


class ServingActivity:
    """The activity file, mapped; :meth:`changed` records a new count of requests in flight."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid = os.getpid()
        self._sequence = 0
        self._last_ended = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:  # a new server: nothing in flight, whatever was before
            file.write(ACTIVITY_LAYOUT.pack(0, 0, 0.0, self._pid))
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), ACTIVITY_LAYOUT.size)

    def changed(self, in_flight: int) -> None:
        """Record ``in_flight`` requests now; with none, the last one ended now. The caller
        serializes calls (Admission's lock)."""
        if self._map.closed:  # a stream dropped after the app stopped
            return
        if in_flight == 0:
            self._last_ended = time.monotonic()
        record = ACTIVITY_LAYOUT.pack(self._sequence + 2, in_flight, self._last_ended, self._pid)
        # Odd while writing: a reader that sees it, or sees it change, reads again.
        self._map[:_SEQUENCE] = (self._sequence + 1).to_bytes(_SEQUENCE, "little")
        self._map[_SEQUENCE:] = record[_SEQUENCE:]
        self._map[:_SEQUENCE] = record[:_SEQUENCE]
        self._sequence += 2

    def close(self) -> None:
        if not self._map.closed:
            self.changed(0)
            self._map.close()


def open_activity(data_dir: Path) -> ServingActivity | None:
    """The activity file of the server of ``data_dir``; None (and a warning) when it cannot be
    written: training then does not pause for requests."""
    try:
        return ServingActivity(data_dir / ACTIVITY_FILE)
    except OSError as exc:
        log.warning(
            "cannot write %s (%s): training will not pause while requests are answered",
            data_dir / ACTIVITY_FILE,
            exc,
        )
        return None
