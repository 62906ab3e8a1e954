"""The server's bridge from an engine's thread to the event loop (``api.state.generate``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from selftune.api.state import generate
from selftune.engines.base import STREAM_END, Chunk, EngineError, GenerationParams, PushingEngine

PARAMS = GenerationParams(max_tokens=1000)


class _Pusher:
    """Pushes numbered chunks from a thread of its own, as the llama.cpp engine does."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.produced = 0
        self.finished = threading.Event()

    def pushes_from_own_thread(self) -> bool:
        return True

    def push_stream(
        self, prompt: Any, params: GenerationParams, adapter: Any, emit: Callable[[Any], None]
    ) -> Callable[[], None]:
        cancelled = threading.Event()

        def run() -> None:
            try:
                for n in range(1, params.max_tokens + 1):
                    if n == self.fail_after:
                        raise EngineError("the engine broke")
                    emit(Chunk(str(n), completion_tokens=n))
                    self.produced = n
                    if cancelled.wait(0.001):
                        return
                emit(Chunk("", "length", params.max_tokens))
            except EngineError as exc:
                emit(exc)
            finally:
                emit(STREAM_END)
                self.finished.set()

        threading.Thread(target=run, daemon=True).start()
        return cancelled.set


class _Iterating:
    """An engine with only ``stream``: the bridge runs it in a thread of the request's own."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def stream(self, prompt: Any, params: GenerationParams, adapter: Any) -> Iterator[Chunk]:
        try:
            for n in range(1, params.max_tokens + 1):
                yield Chunk(str(n), completion_tokens=n)
        finally:
            self.closed.set()


async def _take(engine: Any, count: int) -> list[str]:
    texts = []
    async with contextlib.aclosing(generate(engine, "hi", PARAMS, None)) as chunks:
        async for chunk in chunks:
            texts.append(chunk.text)
            if len(texts) == count:
                break
    return texts


def test_a_pushing_engine_is_stopped_when_the_client_leaves() -> None:
    engine = _Pusher()
    assert isinstance(engine, PushingEngine)
    assert asyncio.run(_take(engine, 3)) == ["1", "2", "3"]
    assert engine.finished.wait(5)
    assert engine.produced < 100  # stopped right after the client left, not after 1000


def test_a_pushing_engine_runs_to_its_end() -> None:
    texts = asyncio.run(_take(_Pusher(), 10_000))
    assert texts[:2] == ["1", "2"] and texts[-1] == "" and len(texts) == 1001


def test_an_engine_error_reaches_the_consumer() -> None:
    with pytest.raises(EngineError, match="broke"):
        asyncio.run(_take(_Pusher(fail_after=5), 10_000))


def test_an_engine_without_a_thread_streams_in_one_and_is_closed_when_the_client_leaves() -> None:
    engine = _Iterating()
    assert not isinstance(engine, PushingEngine)
    assert asyncio.run(_take(engine, 2)) == ["1", "2"]
    assert engine.closed.wait(5)
