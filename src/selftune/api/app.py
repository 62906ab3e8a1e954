"""The FastAPI application: routes, error bodies, and the process's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from selftune import __version__
from selftune.api import (
    analytics,
    autopilot,
    connectors,
    dashboard,
    dashboard_api,
    dashboard_stream,
    downloads,
    embeddings,
    examples,
    imports,
    keys,
    llamacpp_routes,
    manage,
    memory,
    ollama_routes,
    openai_routes,
    proxy,
    queue,
    settings_view,
    vllm_routes,
)
from selftune.api.deps import State
from selftune.api.errors import install_error_handlers
from selftune.api.guards import install_guards
from selftune.api.responses import Health, HealthNotReady
from selftune.api.state import AppState
from selftune.config import Settings
from selftune.engines.base import Engine
from selftune.store.db import Database
from selftune.store.workers import live_workers
from selftune.worker.process import start_worker_process, stop_worker_process

__all__ = ["create_app"]


def create_app(
    settings: Settings, engine: Engine | None = None, *, with_worker: bool = False
) -> FastAPI:
    """Build the app. ``engine`` is for tests; by default the configured model loads at start.

    ``with_worker`` starts a training worker process for the app's lifetime.
    """
    db = Database(settings.resolved_database_url)
    db.migrate()
    state = AppState(settings, db, engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start_activity()
        worker = start_worker_process() if with_worker else None
        if state.engine is None:
            threading.Thread(target=state.load_engine, daemon=True, name="load-model").start()
        watcher = asyncio.create_task(state.watch_alias())
        if state.memory is not None:
            state.memory.start()
        try:
            yield
        finally:
            if state.memory is not None:
                await asyncio.to_thread(state.memory.stop)
            if worker is not None:
                await asyncio.to_thread(stop_worker_process, worker)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            state.stop_activity()
            await proxy.close_proxy(_app)
            db.dispose()

    app = FastAPI(title="selftune", version=__version__, lifespan=lifespan)
    app.state.selftune = state
    install_error_handlers(app)
    install_guards(app, settings.serve)
    if settings.proxy.upstream_url:  # the proxy's routes first: they take chat and completions
        proxy.install_proxy(app, settings.proxy)
    app.include_router(openai_routes.router)
    app.include_router(llamacpp_routes.router)
    app.include_router(vllm_routes.router)
    app.include_router(embeddings.router)
    app.include_router(manage.router)
    app.include_router(examples.router)
    app.include_router(queue.router)
    app.include_router(analytics.router)
    app.include_router(imports.router)
    app.include_router(memory.router)
    app.include_router(connectors.router)
    app.include_router(keys.router)
    app.include_router(downloads.router)
    app.include_router(dashboard_api.router)
    app.include_router(dashboard_stream.router)
    app.include_router(settings_view.router)
    app.include_router(autopilot.router)
    app.include_router(dashboard.router)
    app.include_router(ollama_routes.router)

    @app.get(
        "/health",
        response_model=Health,
        responses={
            200: {"description": "Serving"},
            503: {"model": HealthNotReady, "description": "Loading, or failed to load"},
        },
    )
    async def health(state: State) -> JSONResponse | dict[str, Any]:
        # llama.cpp's shape ({"status": "ok"}, 503 while loading), with what serves added.
        if state.engine is None:
            status = "error" if state.load_error else "loading"
            body = {"status": status, "error": state.load_error}
            return JSONResponse(body, status_code=503)
        workers = await asyncio.to_thread(live_workers, state.db)
        return {"status": "ok", "serving": state.serving.name, "workers": workers}

    return app
