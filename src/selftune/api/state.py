"""What the server process holds: settings, store, engine, and the version it serves.

The engine loads in a background thread so ``/health`` can answer 503 while it does. A poller
watches the serving alias in the store and preloads a newly promoted adapter before switching
to it; each request takes the target once, at its start, and keeps it to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from selftune.config import Settings
from selftune.engines.base import AdapterRef, Chunk, Engine, GenerationParams
from selftune.registry.versions import ServingTarget, serving_target
from selftune.store.db import Database

__all__ = ["AppState"]

log = logging.getLogger(__name__)

_DONE = object()


class AppState:
    def __init__(self, settings: Settings, db: Database, engine: Engine | None = None) -> None:
        self.settings = settings
        self.db = db
        self.engine: Engine | None = engine
        self.load_error: str | None = None
        self.serving = ServingTarget(None, "base", None, None)
        self._refresh_lock = asyncio.Lock()

    # --- loading ---------------------------------------------------------------------------
    def load_engine(self) -> None:
        from selftune.engines.transformers_engine import TransformersEngine
        from selftune.models.base import materialize, resolve_base_model

        try:
            source = resolve_base_model(self.settings.base_model)
            folder = materialize(source, self.settings.cache_dir)
            self.engine = TransformersEngine(
                folder,
                chat_template=self.settings.chat_template,
                context_length=self.settings.context_length,
            )
            log.info("model loaded from %s", source.location)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the model")

    # --- the serving alias -----------------------------------------------------------------
    async def refresh_serving(self) -> ServingTarget:
        """Switch to the alias's current target, preloading its adapter first."""
        async with self._refresh_lock:
            target = await run_in_threadpool(self._read_target)
            if target != self.serving and self.engine is not None:
                adapter = adapter_for(target)
                if adapter is not None:
                    await run_in_threadpool(self.engine.preload_adapter, adapter)
                log.info("now serving %s (was %s)", target.name, self.serving.name)
                self.serving = target
            return self.serving

    def _read_target(self) -> ServingTarget:
        with self.db.read() as session:
            return serving_target(session)

    async def watch_alias(self) -> None:
        while True:
            try:
                if self.engine is not None:
                    await self.refresh_serving()
            except Exception:
                log.exception("could not refresh the serving version")
            await asyncio.sleep(self.settings.adapter_poll_seconds)


def adapter_for(target: ServingTarget) -> AdapterRef | None:
    if target.version_id is None or target.path is None:
        return None
    return AdapterRef(target.version_id, target.name, target.path)


async def generate(
    engine: Engine, prompt: str, params: GenerationParams, adapter: AdapterRef | None
) -> AsyncIterator[Chunk]:
    """Run the engine in its own thread and hand its chunks to the event loop.

    If the consumer stops early (a client disconnects), the thread is told to stop after its
    current token, and it closes the engine's generator itself, which releases the engine.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        iterator = engine.stream(prompt, params, adapter)
        try:
            for chunk in iterator:
                put(chunk)
                if cancelled.is_set():
                    break
        except BaseException as exc:
            put(exc)
            return
        finally:
            with contextlib.suppress(Exception):
                iterator.close()  # type: ignore[attr-defined]
        put(_DONE)

    thread = threading.Thread(target=produce, daemon=True, name="generate")
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()
