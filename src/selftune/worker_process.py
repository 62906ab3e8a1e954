"""The training worker as a child process of the server.

The child is tied to its parent: on Linux it receives SIGTERM when the parent dies, however the
parent dies, so a crashed or killed server never leaves an orphaned worker training behind it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import subprocess
import sys

__all__ = ["start_worker_process", "stop_worker_process"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the server's shutdown still stops the worker


def start_worker_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "selftune", "worker"], preexec_fn=_die_with_parent
    )


def stop_worker_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM (the worker puts a running job back in the queue), then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
