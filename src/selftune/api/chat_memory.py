"""Memory on the chat path: passages retrieved into a chat's prompt, and the answered chat
remembered afterwards (in the background: the reply never waits for it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from selftune.api.errors import ApiError
from selftune.api.memory import checked_tags
from selftune.api.schemas import ChatMemory
from selftune.api.state import AppState
from selftune.memory.records import (
    NewRecord,
    Scope,
    TagFilter,
    add_records,
    delete_records,
    interaction_record,
    question_of,
)
from selftune.memory.retrieval import Passage, fit_passages, passages_of
from selftune.memory.service import Memory, SearchQuery
from selftune.store.schema import Feedback, Interaction, MemoryRecord

if TYPE_CHECKING:
    from selftune.api.generation import Asked

__all__ = ["remember_chat", "remember_correction", "retrieve"]


async def retrieve(
    state: AppState,
    user_id: str,
    asked_for: bool | ChatMemory | None,
    messages: Sequence[dict[str, Any]],
    count_tokens: Callable[[str], int],
    context_length: int,
) -> list[Passage] | None:
    """The passages to add to a chat's prompt (maybe none found); None when the request or
    the settings ask for none. A user's own records and the shared ones are searched, never
    another user's."""
    options = state.settings.memory
    if asked_for is False or (asked_for is None and not options.retrieval):
        return None
    if state.memory is None:
        if asked_for is None:
            return None
        raise ApiError(
            400,
            "this request asks for memory, which is off on this server; set memory.enabled = "
            'true (SELFTUNE_MEMORY__ENABLED) or leave out "memory"',
            code="memory_disabled",
            param="memory",
        )
    chosen = asked_for if isinstance(asked_for, ChatMemory) else ChatMemory(k=None)
    tags = TagFilter(any_of=checked_tags(chosen.tags, "memory.tags"))
    question = question_of(messages)
    if not question.strip():
        return []
    query = SearchQuery(text=question, k=chosen.k or options.retrieval_k, tags=tags)
    hits = await run_in_threadpool(state.memory.search, query, Scope(user_id))
    # A quarter of the context at most, so the conversation and the answer keep their room.
    budget = min(options.retrieval_max_tokens, context_length // 4)
    return await run_in_threadpool(fit_passages, passages_of(hits), count_tokens, budget)


def remember_chat(state: AppState, asked: Asked, answer: str) -> None:
    """Queue an answered chat or completion for memory (written and embedded by memory's own
    thread; one that a crash kept from it is found at the next start)."""
    if state.memory is None or not state.settings.memory.record_chats:
        return
    record = interaction_record(
        interaction_id=asked.interaction_id,
        user_id=asked.user_id,
        kind=asked.kind,
        messages=asked.messages,
        answer=answer,
        tags=asked.tags,
    )
    if record is not None:
        state.memory.remember(record)


def remember_correction(
    session: Session, memory: Memory, interaction: Interaction, feedback: Feedback
) -> None:
    """In the feedback's transaction: a thumbs-down takes the answer out of memory, and a
    correction goes in, as the answer to the same question."""
    gone = delete_records(
        session,
        [MemoryRecord.kind == "interaction", MemoryRecord.source_id == interaction.id],
    )
    memory.forget(gone)
    question = question_of(interaction.messages)
    if feedback.correction and question.strip():
        record = NewRecord(
            user_id=feedback.user_id,
            kind="correction",
            text=f"Q: {question}\nA: {feedback.correction}",
            source="correction",
            source_id=f"feedback:{feedback.id}",
        )
        add_records(session.connection(), [record], auto_tags=memory.config.auto_tags)
    memory.wake()
