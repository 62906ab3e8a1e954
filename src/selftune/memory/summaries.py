"""Channel summaries: the served model's summary of what one channel (a tag) holds, as one scope
sees it, written by the worker (jobs of kind ``memory_summary``).

A scope's summary covers the newest :data:`MAX_RECORDS` records it may see under the tag, so a
user's summary never holds another user's private records and an admin's (scope ``all``) may
hold every record. Whatever the channel's size, the model sees it in parts that fit its context
(map-reduce): the records go in groups, one prompt per group, to partial summaries, which go in
groups again until one prompt summarizes them all. A channel that fits one prompt takes one call.

The summary is stored with the ids of the records it covered and a :func:`fingerprint` of them
(ids and the hashes of their texts): it is stale once that no longer matches the channel's
records (:func:`is_stale`). Deleting a record deletes the summaries that covered it
(``selftune.memory.records.delete_records``). With ``memory.summary_interval_hours`` the worker
queues a new summary of each stale one (:func:`queue_stale`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from selftune.engines.base import AdapterRef
from selftune.memory.records import Scope, TagFilter, matching
from selftune.memory.tags import normalize_tag
from selftune.registry.versions import serving_target
from selftune.store import jobs
from selftune.store.db import Database
from selftune.store.schema import MemoryRecord, MemorySummary, utcnow
from selftune.store.users import ensure_user_row

__all__ = [
    "MAX_RECORDS",
    "SUMMARY_JOB",
    "SUMMARY_TOKENS",
    "SummaryError",
    "channel_records",
    "fingerprint",
    "is_stale",
    "job_params",
    "pack",
    "queue_stale",
    "scope_key",
    "scope_of_summary",
    "summarize_channel",
]

SUMMARY_JOB = "memory_summary"  # Job.kind; params {"tag", "user_id", "everything"}
MAX_RECORDS = 2000  # the newest records of a channel a summary covers
SUMMARY_TOKENS = 256  # longest summary (and partial summary), in tokens
_CALLS_AT_ONCE = 4  # prompts decoded together between two progress reports
_MARGIN = 0.9  # of the room left for records: token counts of parts and whole may differ

_INSTRUCTIONS = "You write short, factual summaries of notes. Say only what the notes say."
_MAP = (
    'These are records of the channel "{tag}", oldest first:\n\n{items}\n\n'
    "Summarize what they hold, the main facts, topics and decisions, in a few sentences."
)
_REDUCE = (
    'These are summaries of parts of the channel "{tag}", oldest part first:\n\n{items}\n\n'
    "Combine them into one summary of the whole channel, in a few sentences."
)


class SummaryError(RuntimeError):
    """A summary that cannot be made; the message says why and what to do."""


def scope_key(scope: Scope) -> str:
    """How :class:`MemorySummary` names ``scope``: ``user:<id>``, or ``all`` for an admin
    (``shared`` for a scope that sees the shared records only)."""
    if scope.everything:
        return "all"
    return "shared" if scope.user_id is None else f"user:{scope.user_id}"


def scope_of_summary(summary: MemorySummary) -> Scope:
    """The scope a stored summary was made for (the inverse of :func:`scope_key`)."""
    if summary.scope == "all":
        return Scope(None, everything=True)
    return Scope(summary.user_id)


def job_params(tag: str, scope: Scope) -> dict[str, Any]:
    """The parameters of the ``memory_summary`` job for ``tag`` as ``scope`` sees it (the same
    for the same channel and scope, so ``jobs.enqueue_once`` makes one job of two asks)."""
    return {
        "tag": normalize_tag(tag),
        "user_id": None if scope.everything else scope.user_id,
        "everything": scope.everything,
    }


def _text(record: MemoryRecord) -> str:
    return f"{record.title}\n{record.text}" if record.title else record.text


def channel_records(
    session: Session, scope: Scope, tag: str, limit: int = MAX_RECORDS
) -> list[MemoryRecord]:
    """The records ``scope`` sees under ``tag``, newest first, at most ``limit``."""
    where = matching(scope, TagFilter(all_of=(normalize_tag(tag),)))
    stmt = select(MemoryRecord).where(*where).order_by(MemoryRecord.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def fingerprint(records: Iterable[tuple[int, str]]) -> str:
    """A hash of records given as (id, text): of their ids and their texts' hashes, in any
    order. It changes when a record joins, leaves or changes."""
    digest = hashlib.sha256()
    for record_id, text in sorted((int(i), t) for i, t in records):
        digest.update(f"{record_id}:{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    return digest.hexdigest()


def _fingerprint_of(records: Sequence[MemoryRecord]) -> str:
    return fingerprint((record.id, _text(record)) for record in records)


def is_stale(session: Session, summary: MemorySummary, scope: Scope) -> bool:
    """Whether the records ``scope`` now sees under the summary's tag differ from those it
    covered (a record added, deleted or changed)."""
    current = channel_records(session, scope, summary.tag)
    return _fingerprint_of(current) != summary.fingerprint


def pack(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of the indices of ``sizes`` whose sizes add up to at most ``budget``
    (an item larger than ``budget`` alone in its group)."""
    groups: list[list[int]] = []
    used = budget + 1
    for index, size in enumerate(sizes):
        if used + size > budget or not groups:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += size
    return groups


class _Model:
    """The served model's greedy answers to the summary prompts, with their token budget."""

    def __init__(self, engine: Any, template: str | None, adapter: AdapterRef | None) -> None:
        self.engine, self.template, self.adapter = engine, template, adapter

    def prompt(self, frame: str, tag: str, items: Sequence[str]) -> str:
        messages = [
            {"role": "system", "content": _INSTRUCTIONS},
            {"role": "user", "content": frame.format(tag=tag, items="\n".join(items))},
        ]
        rendered: str = self.engine.render_chat(messages, self.template)
        return rendered

    def room(self, frame: str, tag: str) -> int:
        """Tokens of the context left beside the prompt without its items."""
        return int(self.engine.context_length) - int(
            self.engine.count_tokens(self.prompt(frame, tag, []))
        )

    def size(self, text: str) -> int:
        return int(self.engine.count_tokens(text)) + 1  # and the newline between items

    def fit(self, text: str, limit: int) -> str:
        """``text`` cut to about ``limit`` tokens."""
        if self.size(text) <= limit:
            return text
        tokens = self.engine.tokenize(text)[: max(1, limit - 2)]
        return f"{self.engine.detokenize(tokens)}…"

    def answer(self, prompts: list[str], max_tokens: int) -> list[str]:
        answers = self.engine.greedy_batch(prompts, max_tokens, self.adapter, batch=len(prompts))
        return [str(answer).strip() for answer in answers]


def _item(record: MemoryRecord) -> str:
    text = " ".join(record.text.split())
    return f"- {record.title}: {text}" if record.title else f"- {text}"


def _map_reduce(
    model: _Model,
    tag: str,
    items: list[str],
    max_tokens: int,
    report: Callable[[float, str], None],
) -> tuple[str, int]:
    """The summary of ``items`` and how many prompts it took."""
    room = min(model.room(_MAP, tag), model.room(_REDUCE, tag))
    max_tokens = max(1, min(max_tokens, room // 4))
    budget = int((room - max_tokens) * _MARGIN)
    if budget < 32:
        raise SummaryError(
            f"the served model's context ({model.engine.context_length} tokens) leaves no room "
            "for the records; serve it with a longer serve.context_length"
        )
    calls, bound, level = 0, 0, 0
    while True:
        frame = _MAP if level == 0 else _REDUCE
        # Partial summaries are cut to half a prompt, so that each prompt combines two or more
        # and every round leaves fewer.
        limit = budget if level == 0 else budget // 2 - 4
        items = [model.fit(item, limit) for item in items]
        groups = pack([model.size(item) for item in items], budget)
        if level and len(groups) == len(items):  # cut texts counted longer: pair them anyway
            groups = [list(range(i, min(i + 2, len(items)))) for i in range(0, len(items), 2)]
        if level == 0:
            bound = 2 * len(groups) - 1 if len(groups) > 1 else 1  # at most, for the progress
        # A partial summary left alone in the last group goes on as it is.
        asked = [n for n, group in enumerate(groups) if level == 0 or len(group) > 1]
        answers = [items[group[0]] for group in groups]
        stage = "summarizing the records" if level == 0 else "combining the partial summaries"
        for start in range(0, len(asked), _CALLS_AT_ONCE):
            part = asked[start : start + _CALLS_AT_ONCE]
            done = min(1.0, calls / bound)
            report(0.05 + 0.9 * done, f"{stage} ({calls + 1} of at most {bound} calls)")
            prompts = [model.prompt(frame, tag, [items[i] for i in groups[n]]) for n in part]
            for n, answer in zip(part, model.answer(prompts, max_tokens), strict=True):
                answers[n] = answer
            calls += len(part)
        if len(groups) == 1:
            return answers[0], calls
        items = [answer for answer in answers if answer]
        if len(items) <= 1:
            return (items[0] if items else ""), calls
        level += 1


def summarize_channel(
    db: Database,
    engine: Any,
    tag: str,
    scope: Scope,
    report: Callable[[float, str], None],
    *,
    max_tokens: int = SUMMARY_TOKENS,
    job_id: int | None = None,
    limit: int = MAX_RECORDS,
) -> dict[str, Any]:
    """Summarize the records ``scope`` sees under ``tag`` with the served model (``engine``'s
    greedy answers under the serving version) and store the summary in place of the scope's
    last one; what was done. Raises :class:`SummaryError` for an empty channel."""
    tag = normalize_tag(tag)
    key = scope_key(scope)
    report(0.0, "reading the channel")
    with db.read() as session:
        records = channel_records(session, scope, tag, limit)
        target = serving_target(session)
    if not records:
        raise SummaryError(
            f"channel {tag!r} holds no records that {_whose(scope)} can see: add notes or "
            f"imports tagged {tag!r} first"
        )
    adapter = (
        AdapterRef(target.version_id, target.name, target.path)
        if target.version_id is not None and target.path is not None
        else None
    )
    model = _Model(engine, target.chat_template, adapter)
    items = [_item(record) for record in reversed(records)]  # oldest first
    text, calls = _map_reduce(model, tag, items, max_tokens, report)
    report(0.97, "saving the summary")
    ids = sorted(record.id for record in records)
    with db.write() as session:
        alive = set(session.scalars(select(MemoryRecord.id).where(MemoryRecord.id.in_(ids))))
        if len(alive) != len(ids):  # deleted meanwhile: their text must not outlive them
            raise SummaryError(
                f"records of channel {tag!r} were deleted while it was summarized; ask again"
            )
        user_id = None if scope.everything else scope.user_id
        if user_id is not None:
            ensure_user_row(session.connection(), user_id)
        summary = session.scalar(
            select(MemorySummary).where(MemorySummary.tag == tag, MemorySummary.scope == key)
        )
        if summary is None:
            summary = MemorySummary(tag=tag, scope=key)
            session.add(summary)
        summary.user_id = user_id
        summary.text = text
        summary.record_ids = ids
        summary.fingerprint = _fingerprint_of(records)
        summary.model = target.name
        summary.job_id = job_id
        summary.created_at = utcnow()
        session.flush()
        summary_id = summary.id
    return {
        "summary_id": summary_id,
        "tag": tag,
        "scope": key,
        "records": len(ids),
        "calls": calls,
        "model": target.name,
        "chars": len(text),
    }


def _whose(scope: Scope) -> str:
    if scope.everything:
        return "anyone"
    return "the shared scope" if scope.user_id is None else f"user {scope.user_id!r}"


def queue_stale(db: Database) -> list[int]:
    """Queue a ``memory_summary`` job for each stored summary whose channel changed (one that
    has no records left is not); the ids of the jobs queued now."""
    with db.read() as session:
        stale = []
        for summary in session.scalars(select(MemorySummary).order_by(MemorySummary.id)):
            scope = scope_of_summary(summary)
            current = channel_records(session, scope, summary.tag)
            if current and _fingerprint_of(current) != summary.fingerprint:
                stale.append((summary.tag, scope, summary.user_id))
    queued = []
    for tag, scope, user_id in stale:
        params = job_params(tag, scope)
        job_id, new = jobs.enqueue_once(db, SUMMARY_JOB, user_id or "system", params)
        if new:
            queued.append(job_id)
    return queued
