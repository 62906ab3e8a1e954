"""The worker lowers its own CPU priority so that serving keeps its speed while it trains."""

from __future__ import annotations

import subprocess
import sys


def _niceness_after(value: int) -> int:
    code = (
        "import os\n"
        "from selftune.worker.loop import _yield_cpu_to_serving\n"
        f"_yield_cpu_to_serving({value})\n"
        "print(os.nice(0))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_the_worker_runs_at_the_configured_niceness() -> None:
    import os

    start = os.nice(0)
    assert _niceness_after(10) == max(10, start)
    assert _niceness_after(0) == start  # never raises priority, never lowers it further
