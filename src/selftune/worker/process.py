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

__all__ = ["die_with_parent", "start_worker_process", "stop_worker_process"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child about to run (a ``preexec_fn``): ask the kernel for SIGTERM when the parent
    dies, even by SIGKILL, where no clean-up of the parent's own can run."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the server's shutdown still stops the worker


def start_worker_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "selftune", "worker"], preexec_fn=die_with_parent
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
