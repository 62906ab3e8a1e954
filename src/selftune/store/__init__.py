"""The store: tables, append-only migrations, and the single-writer database handle."""

from selftune.store.db import Database, StoreError

__all__ = ["Database", "StoreError"]
