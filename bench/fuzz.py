"""The fuzz tests, run longer than in ``make test``: hostile request bodies against the routes
that reach llama.cpp (tests/integration/test_fuzz_native.py, the server in a process of its own
that must stay up), and schemathesis over every operation of ``/openapi.json``
(tests/integration/test_schemathesis.py), each with random examples instead of the short,
fixed set.

Run with ``make bench`` or ``python -m bench.fuzz [EXAMPLES]``: EXAMPLES per route and per
operation and mode (default 200; a few minutes on two cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

DEFAULT_EXAMPLES = 200
TESTS = (
    "tests/integration/test_fuzz_native.py",
    "tests/integration/test_schemathesis.py",
)


def main(argv: list[str]) -> int:
    examples = int(argv[0]) if argv else DEFAULT_EXAMPLES
    env = {**os.environ, "SELFTUNE_FUZZ_EXAMPLES": str(examples)}
    print(f"fuzz: {examples} random examples per route, and per operation and mode", flush=True)
    start = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    status = subprocess.run(command, env=env, check=False).returncode
    verdict = "no crash, no 5xx, no schema violation" if status == 0 else "FAILED"
    print(f"fuzz: {verdict} ({time.monotonic() - start:.0f} s)", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
