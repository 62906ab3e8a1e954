from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from selftune.store.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite store in a fresh file."""
    database = Database(f"sqlite:///{tmp_path / 't.db'}")
    database.migrate()
    yield database
    database.dispose()
