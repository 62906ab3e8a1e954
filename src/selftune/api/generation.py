"""One answer, for any generation route: the engine's chunks, the metrics, and the record.

The OpenAI routes and llama.cpp's ``/completion`` shape their responses differently but generate
through :class:`Generation`, so each of them is counted in ``/metrics`` and recorded the same
way: one interaction, committed before the client gets the end of the answer.

Each answer takes a place in the engine's bounded queue first (api/overload.py), a 429 when it
is full, and gives it back when it ends or its client leaves: a streamed answer is stopped by
Starlette when the client disconnects, a whole one by :func:`whole_answer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from selftune.api.chat_memory import remember_chat
from selftune.api.errors import ApiError
from selftune.api.metrics import RequestTimings
from selftune.api.state import AppState, generate
from selftune.api.targets import Target
from selftune.engines.base import Chunk, Engine, GenerationParams, Prompt, TokenLogprob
from selftune.engines.stops import StopMatcher
from selftune.store.interactions import record_interaction

__all__ = [
    "Asked",
    "Generation",
    "checked_prompt",
    "count_prompt_tokens",
    "room_for",
    "version_headers",
    "whole_answer",
]

# Prompts up to this long are tokenized on the event loop: llama.cpp takes tens of microseconds
# for them, less than handing them to a thread and back.
_TOKENIZE_INLINE_CHARS = 4096


@dataclasses.dataclass(frozen=True)
class Asked:
    """What is recorded about the request: its id, who asked, and what."""

    interaction_id: str
    user_id: str
    kind: str  # "chat" | "completion"
    messages: list[dict[str, Any]]  # chat messages, or [{"prompt": ...}]
    chat_template: str | None = None  # set when the request overrode the template
    memory: list[dict[str, Any]] | None = None  # the memory passages given with the prompt
    tags: tuple[str, ...] = ()  # the channels its memory record goes in


def version_headers(target: Target) -> dict[str, str]:
    return {"X-Selftune-Version": target.name}


async def count_prompt_tokens(engine: Engine, prompt: str) -> int:
    """The prompt's length in tokens; a long prompt is tokenized off the event loop."""
    if len(prompt) <= _TOKENIZE_INLINE_CHARS:
        return engine.count_tokens(prompt)
    return await run_in_threadpool(engine.count_tokens, prompt)


def checked_prompt(
    render: Callable[[list[dict[str, str]]], str],
    messages: list[dict[str, str]],
    template_sent: bool,
) -> str:
    """The chat template's prompt for ``messages``; a 400 when it cannot render them, or renders
    nothing to answer from (``template_sent``: the request brought its own template)."""
    try:
        prompt = render(messages)
    except Exception as exc:
        raise ApiError(
            400, f"the chat template could not render these messages: {exc}", param="messages"
        ) from exc
    if not prompt.strip():
        raise ApiError(
            400,
            "the chat template rendered these messages as an empty prompt: there is nothing to "
            "answer from; check the template, or send messages with content",
            param="chat_template" if template_sent else "messages",
        )
    return prompt


def room_for(engine: Engine, prompt_tokens: int, requested: int | None, param: str) -> int:
    """Tokens left for the answer; a 400 when the prompt, or the request, does not fit."""
    room = engine.context_length - prompt_tokens
    if room <= 0 or (requested is not None and requested > room):
        raise ApiError(
            400,
            f"this model's context is {engine.context_length} tokens; the prompt has "
            f"{prompt_tokens} and {requested or 1} more were asked for. Shorten the prompt "
            f"or lower {param}.",
            code="context_length_exceeded",
            param=param,
        )
    return room


class Generation:
    """Generates one answer with :meth:`run`, then writes it with :meth:`record`."""

    def __init__(self, state: AppState, target: Target, asked: Asked, prompt_tokens: int) -> None:
        self.state, self.target, self.asked = state, target, asked
        self.prompt_tokens = prompt_tokens
        self.text = ""
        self.finish = "length"  # "stop" | "length" as the engine reports it; or "tool_calls"
        self.stop_word = ""  # the stop sequence that ended the answer, when run() matched it
        self.completion_tokens = 0
        self.logprobs: list[TokenLogprob] = []  # when asked for (GenerationParams.top_logprobs)
        self._started = time.perf_counter()
        self._first_text: float | None = None
        self._ended: float | None = None
        self._entered: float | None = None  # when it took its place in the queue; None: left

    def run(
        self, engine: Engine, prompt: Prompt, params: GenerationParams, *, match_stops: bool = False
    ) -> AsyncGenerator[Chunk, None]:
        """Take a place in the engine's queue, or raise its 429 now (before a stream's headers
        go out), and return the answer's chunks; the last one has ``finish_reason`` set.

        With ``match_stops`` the stop sequences are matched here instead of in the engine, so
        :attr:`stop_word` tells a stop sequence from the end-of-sequence token (llama.cpp's
        ``stop_type``); the engine is told to stop as soon as one is found.
        """
        self._entered = self.state.admission.enter()
        chunks = self._run(engine, prompt, params, match_stops)
        # A stream whose client left before Starlette started it never runs its ``finally``:
        # its place is given back when the stream is dropped.
        weakref.finalize(chunks, self._leave)
        return chunks

    def _leave(self) -> None:
        if self._entered is not None:
            entered, self._entered = self._entered, None
            self.state.admission.leave(entered, served=self._first_text is not None)

    async def _run(
        self, engine: Engine, prompt: Prompt, params: GenerationParams, match_stops: bool
    ) -> AsyncGenerator[Chunk, None]:
        matcher = StopMatcher(params.stop) if match_stops else None
        engine_params = dataclasses.replace(params, stop=()) if matcher else params
        metrics = self.state.metrics
        metrics.admitted()
        raw = ""
        try:
            chunks = generate(engine, prompt, engine_params, self.target.adapter)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if self._first_text is None:
                        self._first_text = time.perf_counter()
                        metrics.producing()
                    self.completion_tokens = max(self.completion_tokens, chunk.completion_tokens)
                    piece, finish = chunk.text, chunk.finish_reason
                    if matcher is not None:
                        raw += chunk.text
                        piece, stopped = matcher.feed(raw)
                        if stopped:
                            self.stop_word = _first_stop(raw, params.stop)
                            finish = "stop"
                        elif finish:
                            piece += matcher.flush()
                    self.text += piece
                    self.logprobs += chunk.logprobs
                    if finish:
                        self.finish = finish
                        self._done()
                        yield Chunk(piece, finish, self.completion_tokens, chunk.logprobs)
                        return  # closing the engine's stream stops it after its current token
                    yield Chunk(piece, None, self.completion_tokens, chunk.logprobs)
            self._done()  # an engine that ended without a finish reason: cut at the length
        finally:
            metrics.left(produced=self._first_text is not None)
            self._leave()

    def _done(self) -> None:
        self._ended = time.perf_counter()
        self.state.metrics.count(self.timings())

    def timings(self) -> RequestTimings:
        ended = self._ended or time.perf_counter()
        first = self._first_text or ended
        return RequestTimings(
            prompt_n=self.prompt_tokens,
            prompt_seconds=first - self._started,
            predicted_n=self.completion_tokens,
            predicted_seconds=ended - first,
        )

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def record(self) -> dict[str, int]:
        """Write the interaction (blocking: call it in a thread) and return the usage."""
        asked, target = self.asked, self.target
        record_interaction(
            self.state.db,
            id=asked.interaction_id,
            user_id=asked.user_id,
            kind=asked.kind,
            model=target.model,
            version_id=target.version_id,
            messages=asked.messages,
            response=self.text,
            finish_reason=self.finish,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=round((time.perf_counter() - self._started) * 1000, 2),
            chat_template=asked.chat_template,
            memory=asked.memory,
        )
        remember_chat(self.state, asked, self.text)
        return self.usage()


def _first_stop(text: str, stops: tuple[str, ...]) -> str:
    """The stop sequence found earliest in ``text`` (the one StopMatcher cut at)."""
    hits = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    return min(hits)[1] if hits else ""


async def whole_answer(chunks: AsyncGenerator[Chunk, None], request: Request) -> None:
    """Run an answer that is sent whole (not streamed) to its end, watching its client.

    Starlette notices a disconnect only while it streams; without this, a client that gave up
    (a timeout, a closed tab) would keep its place in the queue and the engine answering
    nobody. If the client leaves first, the answer is stopped and a 499 raised (nginx's
    "client closed request"; nobody reads it).
    """
    answer = asyncio.ensure_future(_drain(chunks))
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not answer.done():
            answer.cancel()  # the engine stops after its current token, the place is freed
            with contextlib.suppress(asyncio.CancelledError):
                await answer
    if answer.cancelled():
        raise ApiError(
            499, "the client closed the connection before the answer was ready", code="client_gone"
        )
    answer.result()  # the engine's error, if it failed


async def _drain(chunks: AsyncGenerator[Chunk, None]) -> None:
    async with contextlib.aclosing(chunks):
        async for _ in chunks:
            pass


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects (the body is read: nothing else can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
