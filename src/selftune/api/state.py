"""What the server process holds: settings, store, engine, and the version it serves.

The engine loads in a background thread so ``/health`` can answer 503 while it does. A poller
watches the serving alias in the store and preloads a newly promoted adapter before switching
to it; each request takes the target once, at its start, and keeps it to its end.

Runtime adapters (vLLM's ``POST /v1/load_lora_adapter``) live here too, in memory only: like
vLLM's, they are gone after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from selftune.api.activity import ServingActivity, open_activity
from selftune.api.auth import FailedAttempts
from selftune.api.errors import ApiError
from selftune.api.metrics import ServerMetrics
from selftune.api.overload import Admission, RateLimit
from selftune.config import Settings
from selftune.engines.base import (
    STREAM_END,
    AdapterRef,
    Chunk,
    Engine,
    GenerationParams,
    Prompt,
    PushingEngine,
)
from selftune.memory.served import embedder_loaders
from selftune.memory.service import Memory, MemoryConfig
from selftune.models.loading import MODEL_LOADING
from selftune.registry.versions import ServingTarget, serving_target
from selftune.store.db import Database

if TYPE_CHECKING:
    from selftune.models.base import BaseModelSource

__all__ = ["AppState", "adapter_for", "app_state", "generate", "ready_engine"]

log = logging.getLogger(__name__)


class AppState:
    def __init__(self, settings: Settings, db: Database, engine: Engine | None = None) -> None:
        self.settings = settings
        self.db = db
        self.engine: Engine | None = engine
        self.load_error: str | None = None
        self.serving = ServingTarget(None, "base", None, None)
        self.metrics = ServerMetrics()
        self.admission = Admission(settings.serve.max_queued_requests)
        self.rate_limit = RateLimit(settings.serve.rate_limit_per_minute)
        self.failed_keys = FailedAttempts(settings.serve.auth_failures_per_minute)
        # Adapters loaded at runtime, by the name clients send as ``model``. Their AdapterRef
        # carries a negative version_id: they are not stored versions.
        self.runtime_adapters: dict[str, AdapterRef] = {}
        self.runtime_lock = threading.Lock()  # one load or unload at a time
        self._runtime_ids = itertools.count(1)
        self._refresh_lock = asyncio.Lock()
        self._base_source: BaseModelSource | None = None
        self._base_folder: Path | None = None
        self.memory: Memory | None = memory_of(settings, db, self.wait_for_engine)
        self._activity: ServingActivity | None = None

    # --- requests in flight, for the worker -----------------------------------------------
    def start_activity(self) -> None:
        """Tell the worker of this data folder when requests are in flight, so that training
        pauses for them (api/activity.py); for the app's lifetime."""
        self._activity = open_activity(self.settings.data_dir)
        if self._activity is not None:
            self.admission.on_change = self._activity.changed

    def stop_activity(self) -> None:
        self.admission.on_change = None
        if self._activity is not None:
            self._activity.close()
            self._activity = None

    # --- loading ---------------------------------------------------------------------------
    def wait_for_engine(self, timeout: float = 600.0) -> Engine:
        """The engine once loaded (from a background thread: it blocks)."""
        deadline = time.monotonic() + timeout
        while self.engine is None:
            if self.load_error or time.monotonic() > deadline:
                raise RuntimeError(f"the served model did not load: {self.load_error}")
            time.sleep(0.2)
        return self.engine

    def load_engine(self) -> None:
        from selftune.engines.factory import build_engine
        from selftune.models.base import resolve_base_model

        try:
            source = resolve_base_model(self.settings.base_model)
            with MODEL_LOADING:  # not beside the memory's embedding model (models/loading.py)
                self.engine = build_engine(self.settings, source)
            log.info("model loaded from %s (%s)", source.location, self.engine.name)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the model")

    # --- the base model, as files ---------------------------------------------------------
    def base_source(self) -> BaseModelSource:
        """Where the configured base model comes from (resolved once; it reads the file)."""
        from selftune.models.base import resolve_base_model

        if self._base_source is None:
            self._base_source = resolve_base_model(self.settings.base_model)
        return self._base_source

    def base_folder(self) -> Path:
        """The base as a Hugging Face folder (config.json, weights): for checking adapters."""
        from selftune.models.base import materialize

        if self._base_folder is None:
            self._base_folder = materialize(self.base_source(), self.settings.cache_dir)
        return self._base_folder

    def next_runtime_id(self) -> int:
        """A fresh negative id for a runtime adapter, never reused within this process."""
        return -next(self._runtime_ids)

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
            await asyncio.sleep(self.settings.serve.adapter_poll_seconds)


def memory_of(settings: Settings, db: Database, engine: Callable[[], Engine]) -> Memory | None:
    """The memory ``settings`` ask for, not started; None when memory is off. ``engine``
    waits for the serving engine (for ``memory.embedding_model = "served"``)."""
    options = settings.memory
    if not options.enabled:
        return None
    config = MemoryConfig(
        embedding_model=options.embedding_model,
        folder=settings.data_dir / "memory",
        auto_tags=options.auto_tags,
        tag_weight=options.tag_weight,
        exact_below=options.exact_below,
        record_chats=options.record_chats,
    )
    load, name = embedder_loaders(settings.base_model, options.embedding_device, engine)
    return Memory(db, config, loader=load, name_of=name)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.selftune
    return state


def ready_engine(state: AppState) -> Engine:
    """The loaded engine, or the error that tells the client to wait (or why it never will)."""
    if state.engine is None:
        if state.load_error:
            raise ApiError(
                500,
                f"the model failed to load: {state.load_error}",
                type="server_error",
                code="model_load_failed",
            )
        raise ApiError(
            503,
            "the model is still loading; retry in a few seconds",
            type="server_error",
            code="model_loading",
        )
    return state.engine


def adapter_for(target: ServingTarget) -> AdapterRef | None:
    if target.version_id is None or target.path is None:
        return None
    return AdapterRef(target.version_id, target.name, target.path)


async def generate(
    engine: Engine, prompt: Prompt, params: GenerationParams, adapter: AdapterRef | None
) -> AsyncGenerator[Chunk, None]:
    """Hand the engine's chunks to the event loop as it generates them.

    An engine with a thread of its own pushes its chunks straight into the loop; any other runs
    in a thread started for the request. If the consumer stops early (a client disconnects), the
    engine is told to stop after its current token and releases itself.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    if isinstance(engine, PushingEngine) and engine.pushes_from_own_thread():
        cancel = engine.push_stream(prompt, params, adapter, put)
    else:
        cancel = _stream_in_thread(engine, prompt, params, adapter, put)
    try:
        while (item := await queue.get()) is not STREAM_END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel()


def _stream_in_thread(
    engine: Engine,
    prompt: Prompt,
    params: GenerationParams,
    adapter: AdapterRef | None,
    emit: Callable[[Any], None],
) -> Callable[[], None]:
    """``engine.stream`` in a new thread, emitting as :meth:`PushingEngine.push_stream` does."""
    cancelled = threading.Event()

    def produce() -> None:
        try:
            iterator = engine.stream(prompt, params, adapter)
            try:
                for chunk in iterator:
                    emit(chunk)
                    if cancelled.is_set():
                        break
            finally:
                with contextlib.suppress(Exception):
                    iterator.close()  # type: ignore[attr-defined]
        except BaseException as exc:
            emit(exc)
        finally:
            emit(STREAM_END)

    threading.Thread(target=produce, daemon=True, name="generate").start()
    return cancelled.set
