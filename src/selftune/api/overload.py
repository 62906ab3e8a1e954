"""What keeps an overloaded server answering: a bounded queue in front of the engine, and a
rate limit per caller.

The engine answers one request at a time (llama.cpp on its one compute thread, transformers
under a lock); the others wait their turn. :class:`Admission` bounds how many may wait: past
``serve.max_queued_requests`` a generation request gets 429 at once, with a ``Retry-After``
estimated from how long recent answers held the engine, rather than waiting without limit
while its client times out and the server's memory grows with the queue.

:class:`RateLimit` gives each caller (an API key, or a client address) ``serve.
rate_limit_per_minute`` calls a minute, as a token bucket: that many at once, then one every
60/N seconds; past it, 429 with ``Retry-After``.

Both are plain counters under a lock, with no store read and no thread hop: they sit on every
generation request's path. Admission also tells the worker, through a shared file, whether any
request is inside, so that training pauses for it (api/activity.py).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable

from selftune.api.errors import ApiError

__all__ = ["Admission", "RateLimit"]

# Recent answers the Retry-After estimate averages over: enough to smooth one long answer out,
# few enough to follow a change of load within seconds.
_RECENT = 16


class Admission:
    """Places for generation requests: one the engine is answering, ``queued`` waiting for it.

    :meth:`enter` takes a place or raises the 429; :meth:`leave` gives it back when the answer
    ends, is stopped, or its client went away while it waited.
    """

    def __init__(
        self,
        queued: int,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.limit = queued + 1
        self.clock = clock
        # Told each new count of requests inside, under the lock: the worker pauses training
        # while there are any (api/activity.py).
        self.on_change = on_change
        self.inside = 0  # requests answered or waiting now
        self._held: collections.deque[float] = collections.deque(maxlen=_RECENT)
        self._last_served = 0.0  # when the last answered request left the engine
        self._lock = threading.Lock()  # leave() may run in a thread that drops a stream

    def enter(self) -> float:
        """Take a place; returns the time it was taken, for :meth:`leave`. A 429 when the
        engine is busy and ``serve.max_queued_requests`` requests already wait."""
        with self._lock:
            if self.inside >= self.limit:
                wait = self._retry_after()
                raise ApiError(
                    429,
                    f"the server is at capacity: {self.inside - 1} requests already wait for "
                    f"the model (serve.max_queued_requests); retry in {wait} s",
                    type="server_error",
                    code="server_busy",
                    headers={"Retry-After": str(wait)},
                )
            self.inside += 1
            if (notify := self.on_change) is not None:
                notify(self.inside)
            return self.clock()

    def leave(self, entered: float, *, served: bool) -> None:
        """Give back the place taken at ``entered``. ``served``: the engine answered it (even in
        part), so its time on the engine counts in the estimate; a request that left while it
        waited tells nothing about how long answers take."""
        with self._lock:
            self.inside -= 1
            if (notify := self.on_change) is not None:
                notify(self.inside)
            if served:
                now = self.clock()
                # It held the engine from when the one before it left (it waited until then),
                # or from its own arrival if the engine was idle.
                self._held.append(now - max(entered, self._last_served))
                self._last_served = now

    def _retry_after(self) -> int:
        """Whole seconds until a place is likely free: one answer's time on the engine, the
        mean of the recent ones (at least 1; 1 before any answer)."""
        if not self._held:
            return 1
        return max(1, math.ceil(sum(self._held) / len(self._held)))


class RateLimit:
    """``per_minute`` calls a minute per caller, as a token bucket; 0: no limit."""

    _MOST_CALLERS = 10_000  # past this many, callers whose bucket is full again are forgotten

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._per_second = per_minute / 60
        self._buckets: dict[str, tuple[float, float]] = {}  # caller: (calls left, when)
        self._lock = threading.Lock()

    def check(self, caller: str) -> None:
        """Count a call of ``caller``; a 429 with ``Retry-After`` when it has none left."""
        if not self.per_minute:
            return
        with self._lock:
            now = self.clock()
            left = self._left(caller, now)
            if left < 1:
                wait = max(1, math.ceil((1 - left) / self._per_second))
                raise ApiError(
                    429,
                    f"rate limit reached: {self.per_minute} requests a minute per API key or "
                    f"client address (serve.rate_limit_per_minute); retry in {wait} s",
                    type="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(wait)},
                )
            if len(self._buckets) >= self._MOST_CALLERS and caller not in self._buckets:
                self._forget_idle(now)
            self._buckets[caller] = (left - 1, now)

    def _left(self, caller: str, now: float) -> float:
        bucket = self._buckets.get(caller)
        if bucket is None:
            return float(self.per_minute)
        left, since = bucket
        return min(float(self.per_minute), left + (now - since) * self._per_second)

    def _forget_idle(self, now: float) -> None:
        for caller in [c for c in self._buckets if self._left(c, now) >= self.per_minute]:
            del self._buckets[caller]
