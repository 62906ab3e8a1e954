"""How much of the machine's CPU other processes took while a benchmark measured.

These machines are shared: another process computing at the same time oversubscribes the cores
and can slow a step tenfold (OpenMP threads wait on each other), so a benchmark says when that
happened rather than leave a slow figure unexplained.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CpuShare"]

_PROC = Path("/proc")
_NOISY = 0.1  # more than this share taken by others: the figures say little


class CpuShare:
    """Share of the machine's CPU time used by other processes between start and ``other()``.

    "Other" is everything but this process and the process ``sessions`` it started (a server
    and its worker, started with ``start_new_session``).
    """

    def __init__(self, sessions: Sequence[int] = ()) -> None:
        self.sessions = tuple(sessions)
        self._busy, self._total = _busy_jiffies()
        self._own = self._own_jiffies()

    def other(self) -> float | None:
        """The share, 0 to 1; None when no time has passed or /proc cannot tell."""
        busy, total = _busy_jiffies()
        if total <= self._total:
            return None
        own = self._own_jiffies() - self._own
        return max(0.0, (busy - self._busy - own) / (total - self._total))

    def summary(self, during: str) -> str:
        """The share as a line of the benchmark's output ("" when /proc cannot tell)."""
        share = self.other()
        if share is None:
            return ""
        note = ": figures unreliable, rerun on a quiet machine" if share > _NOISY else ""
        return f"other processes used {share:.0%} of the CPUs during {during}{note}"

    def _own_jiffies(self) -> float:
        own = sum(os.times()[:4]) * os.sysconf("SC_CLK_TCK")  # and waited-for children's
        return own + sum(_session_jiffies(session) for session in self.sessions)


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait; guest time is already inside user
    return sum(fields) - idle, sum(fields)


def _session_jiffies(session: int) -> int:
    """CPU jiffies of the live processes of ``session`` and of their waited-for children."""
    total = 0
    for stat in _PROC.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == session:  # field 6 of proc_pid_stat(5): the session id
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total
