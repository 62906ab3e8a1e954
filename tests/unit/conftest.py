from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.training_throughput import Setup, Workload, set_up
from selftune.config import load_settings
from selftune.store.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite store in a fresh file."""
    database = Database(f"sqlite:///{tmp_path / 't.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def short_chats(tiny_model_dir: Path, tmp_path: Path) -> Callable[[str], Setup]:
    """The throughput benchmark's short chats on the tiny model, set up for production's trainer
    in the precision given (``train.precision``), uncompiled, seed 0."""

    def set_up_in(precision: str) -> Setup:
        settings = load_settings(
            data_dir=tmp_path, train={"precision": precision, "compile": "off", "max_seq_len": 64}
        )
        workload = Workload("short chats", 0, every_variant=False)
        return set_up(workload, settings, tiny_model_dir, 0)

    return set_up_in
