"""The layering rules (pyproject's import-linter contracts) hold, and a wrong import breaks them.

``make test`` runs ``lint-imports`` on the package itself; this shows that the contracts have
teeth: the same package with one forbidden import added fails them, naming the contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with ``src`` as the place ``selftune`` is imported from."""
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1));"
        "from importlinter.cli import lint_imports_command; lint_imports_command()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(src), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_its_layers() -> None:
    result = _lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("api/manage.py", "selftune.training.trainer", "The server never loads training code"),
        ("engines/base.py", "selftune.store.db", "Engines serve"),
        ("store/db.py", "selftune.config", "The store imports nothing of selftune above it"),
        ("data/documents.py", "selftune.memory.service", "Only the server searches memory"),
    ],
)
def test_a_forbidden_import_fails_the_contracts(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    shutil.copytree(ROOT / "src" / "selftune", tmp_path / "selftune")
    path = tmp_path / "selftune" / module
    path.write_text(path.read_text() + f"\nimport {forbidden}  # a wrong import\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout
