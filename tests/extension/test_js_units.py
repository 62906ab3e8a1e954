"""The extension's pure modules (extension/lib/*.js), tested with node's test runner: the
files in tests/extension/js/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = sorted((Path(__file__).parent / "js").glob("*.test.mjs"))
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("path", TESTS, ids=[p.name for p in TESTS])
def test_module(path: Path) -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--test", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
