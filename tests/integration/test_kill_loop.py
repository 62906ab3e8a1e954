"""A few rounds of the crash loop (bench/kill_loop.py): ``selftune serve`` killed with SIGKILL
under concurrent load, the worker killed while it saves a version and while it writes an export.
Nothing acknowledged is lost, the store stays intact, no half-written artifact is visible, and
the interrupted jobs are taken up again and finish. ``python -m bench.kill_loop`` runs 200."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.kill_loop import Report, ServeUnavailable, run
from selftune.models.base import default_gguf_path

POSTGRES = os.environ.get("SELFTUNE_TEST_POSTGRES_URL")


def _run(tmp_path: Path, database: str | None = None) -> Report:
    if not default_gguf_path().is_file():
        pytest.skip("the default model's GGUF (its tokenizer) is not installed")
    try:
        report = run(3, worker_kill_count=2, clients=3, database=database, folder=str(tmp_path))
    except ServeUnavailable as exc:
        log = (tmp_path / "server.log").read_text(errors="replace")[-2000:]
        pytest.skip(f"selftune serve cannot start here: {exc}\n{log}")
    print(report.text("PostgreSQL" if database else "SQLite"))
    return report


def _check(report: Report) -> None:
    assert report.ok, report.errors
    assert report.kills == 3
    assert report.chats_acknowledged > 0
    assert report.worker_kills + report.worker_kills_missed == 2
    assert report.jobs_recovered >= report.worker_kills


def test_kill_loop_on_sqlite(settings_env: Path, tmp_path: Path) -> None:
    _check(_run(tmp_path / "loop"))


@pytest.mark.skipif(not POSTGRES, reason="set SELFTUNE_TEST_POSTGRES_URL to run")
def test_kill_loop_on_postgres(settings_env: Path, tmp_path: Path) -> None:
    assert POSTGRES
    engine = create_engine(POSTGRES)

    def empty() -> None:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))

    empty()
    try:
        _check(_run(tmp_path / "loop", database=POSTGRES))
    finally:
        empty()
        engine.dispose()
