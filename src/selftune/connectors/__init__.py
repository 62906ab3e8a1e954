"""Connectors: jobs that reach out on their own schedule ("timesteps"), such as answering the
comments on a YouTube channel. Each is registered in :data:`CONNECTORS` with
:func:`register`; ``selftune.connectors.schedule`` decides which are due and runs them as jobs
of kind ``timestep``, in the worker or from ``selftune timestep``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from selftune.config import Settings
from selftune.store.db import Database

__all__ = [
    "CONNECTORS",
    "Connector",
    "ConnectorRun",
    "ConnectorUnavailable",
    "register",
]


class ConnectorUnavailable(RuntimeError):
    """The outside service refused this run (quota spent, credentials expired): the message
    says what to do; the run is recorded failed and tried again later."""


@dataclasses.dataclass(frozen=True)
class ConnectorRun:
    settings: Settings
    db: Database
    engine: Any  # an EvaluatingEngine: greedy_batch, render_chat, count_tokens
    report: Callable[[float, str], None]  # (progress 0..1, stage)


class Connector(Protocol):
    name: str

    def enabled(self, settings: Settings) -> bool: ...

    def interval_seconds(self, settings: Settings) -> float: ...

    def run(self, run: ConnectorRun) -> dict[str, Any]:
        """Do one timestep's work; returns its summary (JSON-able)."""
        ...


CONNECTORS: dict[str, Connector] = {}


def register(connector: Connector) -> Connector:
    if connector.name in CONNECTORS:
        raise ValueError(f"a connector named {connector.name!r} is registered already")
    CONNECTORS[connector.name] = connector
    return connector


def _register_builtin() -> None:
    from selftune.connectors.youtube import YouTubeResponder

    register(YouTubeResponder())


_register_builtin()
