"""The benchmarks tell other processes' CPU use from their own, a server they started included."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.cpu_share import CpuShare, _session_jiffies

# On a word, 0.6 s of CPU, then say so and stay alive (an ended process is no longer in /proc).
_BURN = """
import sys, time
sys.stdin.readline()
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_a_started_server_session_counts_as_the_benchmarks_own() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _BURN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        with_session, without = CpuShare(sessions=[child.pid]), CpuShare()
        before = _session_jiffies(child.pid)
        started = time.monotonic()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"burnt\n"  # the child computed; this process waited
        elapsed = time.monotonic() - started
        assert _session_jiffies(child.pid) - before >= 55  # its 0.6 s, in 1/100 s
        # Counted as another process's time only when its session is not named. Both shares
        # cover the same window, so whatever else the machine did is in both.
        other_with, other_without = with_session.other(), without.other()
        assert other_with is not None and other_without is not None
        cores = os.cpu_count() or 1
        assert other_without - other_with == pytest.approx(0.6 / elapsed / cores, rel=0.5)
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_a_session_with_no_process_has_no_time() -> None:
    assert _session_jiffies(2**22 + 12345) == 0  # above Linux's largest pid
