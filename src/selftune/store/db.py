"""Database handle: SQLite (WAL, one writer, ``BEGIN IMMEDIATE``) or any SQLAlchemy URL.

Writes go through :meth:`Database.write`, a short transaction that is committed before the
caller acknowledges anything. With SQLite each write transaction starts with ``BEGIN IMMEDIATE``
so concurrent writers queue on the database lock instead of failing half-way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "StoreError"]

_MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(RuntimeError):
    """The database cannot be opened or migrated; the message says what to do."""


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (the documented pysqlite recipe).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "BEGIN")
        conn.exec_driver_sql(mode)

    return engine


class Database:
    """Engine, sessions and migrations for one store URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url)
            writer: Engine = self.engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
            writer = self.engine
        self._write_engine = writer
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(writer, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        try:
            with self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except Exception as exc:
            raise StoreError(f"could not migrate the database at {self.url}: {exc}") from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction; committed when the block ends without an exception."""
        with self._writer() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A write transaction on a bare connection, for hot paths: SQLAlchemy Core statements
        run several times faster than an ORM session's unit of work."""
        with self._write_engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
