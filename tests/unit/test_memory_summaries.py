"""Channel summaries without a model: a fake engine (a token is a word) shows the map-reduce
(records in groups that fit the context, partial summaries, a summary of them), what a
summary covers in each scope, staleness, and the worker's schedule of refreshes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select

from selftune.memory.records import NewRecord, Scope, add_records, delete_records
from selftune.memory.summaries import (
    SUMMARY_JOB,
    SummaryError,
    channel_records,
    fingerprint,
    is_stale,
    pack,
    queue_stale,
    scope_key,
    summarize_channel,
)
from selftune.store.db import Database
from selftune.store.schema import Job, MemoryRecord, MemorySummary


class WordEngine:
    """An engine whose tokens are words; it answers each prompt with a short numbered text and
    keeps every prompt it was given."""

    name = "fake"

    def __init__(self, context_length: int = 200) -> None:
        self.context_length = context_length
        self.prompts: list[str] = []
        self.max_tokens: list[int] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def tokenize(self, text: str, *, add_special: bool = False) -> list[str]:
        return text.split()

    def detokenize(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)

    def render_chat(self, messages: list[dict[str, str]], template: str | None = None) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def greedy_batch(
        self, prompts: list[str], max_tokens: int, adapter: Any, batch: int = 16, until: Any = None
    ) -> list[str]:
        answers = []
        for prompt in prompts:
            self.prompts.append(prompt)
            self.max_tokens.append(max_tokens)
            answers.append(f"summary{len(self.prompts)} of a part")
        return answers


def _note(user: str, text: str, tags: Sequence[str] = ("garden",), shared: bool = False) -> Any:
    return NewRecord(user_id=user, kind="note", text=text, tags=tags, shared=shared)


def _write(db: Database, *records: NewRecord) -> list[int]:
    with db.write() as session:
        return add_records(session.connection(), records, auto_tags=0)


def _noop(_progress: float, _stage: str) -> None:
    pass


def test_pack_keeps_order_and_budget() -> None:
    assert pack([3, 3, 3, 3], 7) == [[0, 1], [2, 3]]
    assert pack([10, 1, 1], 5) == [[0], [1, 2]]  # too large: alone
    assert pack([], 5) == []


def test_a_small_channel_takes_one_call(db: Database) -> None:
    ids = _write(db, _note("ann", "Tomatoes want sun."), _note("ann", "Basil likes water."))
    engine = WordEngine()
    result = summarize_channel(db, engine, "Garden", Scope("ann"), _noop)
    assert result["calls"] == 1 and result["records"] == 2 and result["scope"] == "user:ann"
    [prompt] = engine.prompts
    assert "Tomatoes want sun." in prompt and "Basil likes water." in prompt
    with db.read() as session:
        [summary] = session.scalars(select(MemorySummary)).all()
    assert summary.tag == "garden" and summary.text == "summary1 of a part"
    assert summary.record_ids == sorted(ids) and summary.model == "base"


def test_a_large_channel_is_summarized_in_parts_then_as_a_whole(db: Database) -> None:
    texts = [f"record{n} " + " ".join(f"word{n}x{k}" for k in range(20)) for n in range(60)]
    ids = _write(db, *(_note("ann", text) for text in texts))
    engine = WordEngine(context_length=200)
    reports: list[float] = []
    result = summarize_channel(
        db, engine, "garden", Scope("ann"), lambda p, _s: reports.append(p), max_tokens=30
    )
    maps = [p for p in engine.prompts if "These are records" in p]
    reduces = [p for p in engine.prompts if "These are summaries of parts" in p]
    assert len(maps) > 5 and reduces, (len(maps), len(reduces))
    assert result["calls"] == len(engine.prompts) <= 2 * len(maps) - 1
    # Every prompt fits the context with room for its answer, every record is read once.
    assert all(engine.count_tokens(p) + 30 <= 200 for p in engine.prompts)
    for n in range(60):
        assert sum(f"record{n} " in p for p in maps) == 1
    # The last call combines partial summaries, and its answer is the summary.
    assert "summary1 of a part" in "".join(reduces)
    with db.read() as session:
        [summary] = session.scalars(select(MemorySummary)).all()
    assert summary.text == f"summary{len(engine.prompts)} of a part"
    assert summary.record_ids == sorted(ids)
    assert reports == sorted(reports) and reports[-1] < 1


def test_a_record_longer_than_the_context_is_cut(db: Database) -> None:
    _write(db, _note("ann", " ".join(["long"] * 5000)))
    engine = WordEngine(context_length=200)
    summarize_channel(db, engine, "garden", Scope("ann"), _noop, max_tokens=30)
    [prompt] = engine.prompts
    assert engine.count_tokens(prompt) + 30 <= 200


def test_an_empty_channel_is_refused(db: Database) -> None:
    _write(db, _note("bob", "Bob's private plot.", tags=("garden",)))
    with pytest.raises(SummaryError, match="holds no records"):
        summarize_channel(db, WordEngine(), "garden", Scope("ann"), _noop)


def test_a_users_summary_covers_its_own_and_shared_records_only(db: Database) -> None:
    [own] = _write(db, _note("ann", "Ann's beans."))
    [theirs] = _write(db, _note("bob", "Bob's secret compost recipe."))
    [shared] = _write(db, _note("root", "The garden opens at 8.", shared=True))
    engine = WordEngine()
    summarize_channel(db, engine, "garden", Scope("ann"), _noop)
    assert "secret" not in engine.prompts[-1]
    summarize_channel(db, engine, "garden", Scope("root", everything=True), _noop)
    with db.read() as session:
        by_scope = {s.scope: s for s in session.scalars(select(MemorySummary))}
    assert set(by_scope) == {"user:ann", "all"}
    assert by_scope["user:ann"].record_ids == [own, shared]
    assert by_scope["user:ann"].user_id == "ann"
    assert by_scope["all"].record_ids == [own, theirs, shared]
    assert by_scope["all"].user_id is None


def test_a_summary_goes_stale_when_its_channel_changes(db: Database) -> None:
    _write(db, _note("ann", "Ann's beans."))
    summarize_channel(db, WordEngine(), "garden", Scope("ann"), _noop)

    def stale() -> bool:
        with db.read() as session:
            summary = session.scalars(select(MemorySummary)).one()
            return is_stale(session, summary, Scope("ann"))

    assert not stale()
    _write(db, _note("bob", "Bob's own bed.", tags=("garden",)))  # not ann's to see
    _write(db, _note("ann", "Ann's peas.", tags=("kitchen",)))  # another channel
    assert not stale()
    [new] = _write(db, _note("ann", "Ann's peas."))
    assert stale()
    with db.write() as session:
        delete_records(session, [MemoryRecord.id == new])
    assert not stale()


def test_fingerprint_depends_on_ids_and_texts_not_order() -> None:
    assert fingerprint([(1, "a"), (2, "b")]) == fingerprint([(2, "b"), (1, "a")])
    assert fingerprint([(1, "a"), (2, "b")]) != fingerprint([(1, "a"), (2, "c")])
    assert fingerprint([(1, "a")]) != fingerprint([(2, "a")])


def test_the_schedule_queues_stale_summaries_once(db: Database) -> None:
    _write(db, _note("ann", "Ann's beans."), _note("root", "Opens at 8.", shared=True))
    summarize_channel(db, WordEngine(), "garden", Scope("ann"), _noop)
    summarize_channel(db, WordEngine(), "garden", Scope(None, everything=True), _noop)
    assert queue_stale(db) == []
    _write(db, _note("bob", "Bob's bed."))  # only the admin's view changes
    [job_id] = queue_stale(db)
    assert queue_stale(db) == []  # queued already
    with db.read() as session:
        job = session.get(Job, job_id)
    assert job is not None and job.kind == SUMMARY_JOB
    assert job.params == {"tag": "garden", "user_id": None, "everything": True}


def test_scope_keys() -> None:
    assert scope_key(Scope("ann")) == "user:ann"
    assert scope_key(Scope("root", everything=True)) == "all"


def test_channel_records_are_newest_first_and_capped(db: Database) -> None:
    ids = _write(db, *(_note("ann", f"note {n}") for n in range(5)))
    with db.read() as session:
        assert [r.id for r in channel_records(session, Scope("ann"), "GARDEN", 3)] == ids[:1:-1]
