"""The FastAPI application: routes, error bodies, and the process's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from selftune import __version__
from selftune.api import manage, openai_routes
from selftune.api.errors import install_error_handlers
from selftune.api.state import AppState
from selftune.config import Settings
from selftune.engines.base import Engine
from selftune.store.db import Database

__all__ = ["create_app"]


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the app. ``engine`` is for tests; by default the configured model loads at start."""
    db = Database(settings.resolved_database_url)
    db.migrate()
    state = AppState(settings, db, engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if state.engine is None:
            threading.Thread(target=state.load_engine, daemon=True, name="load-model").start()
        watcher = asyncio.create_task(state.watch_alias())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            db.dispose()

    app = FastAPI(title="selftune", version=__version__, lifespan=lifespan)
    app.state.selftune = state
    install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(manage.router)

    @app.get("/health")
    async def health(_request: Request) -> Any:
        if state.engine is None:
            status = "error" if state.load_error else "loading"
            body = {"status": status, "error": state.load_error}
            return JSONResponse(body, status_code=503)
        return {"status": "ok", "serving": state.serving.name}

    return app
