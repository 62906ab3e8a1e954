"""Examples submitted directly, in OpenAI's fine-tuning chat format (``{"messages": [...]}``).

A submission is all or nothing: every conversation is checked first, and one that is not a
conversation refuses the whole request (:class:`SubmissionError`, naming the JSONL line or the
list position and what is wrong). The rest go through curation (``selftune.curate``) against the
owner's examples kept before, and are stored in one transaction, kept ones active (training uses
them), rejected and flagged ones inactive with their reason. Everything stored is scrubbed.

Deduplication is against the owner's own examples, not everyone's: a rejection says which
example it repeats, and measuring against other users' examples would tell a user what others
had taught. Contributor caps (docs/curation.md) keep one user from flooding a run.

OpenAI's ``weight`` (0 or 1, on assistant messages) is accepted and given back by the export,
but selftune learns only the last assistant turn, so a weight of 0 there leaves nothing to
learn and is refused. Weights are kept in the provenance, not in the messages training reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from selftune.curate import CurationPolicy, CurationResult, Curator, Example, Reason, Rejection
from selftune.store.db import Database
from selftune.store.schema import TrainingExample, VersionExample, as_utc
from selftune.store.users import ensure_user

__all__ = [
    "SUBMITTED",
    "Conversation",
    "ExampleConflict",
    "SubmissionError",
    "example_view",
    "export_lines",
    "kept_examples",
    "list_examples",
    "parse_json",
    "parse_jsonl",
    "release_example",
    "remove_example",
    "submit",
]

SUBMITTED = "submitted"  # the source of examples submitted directly
STATES = ("kept", "rejected", "flagged")
_ROLES = ("system", "user", "assistant")
_ATTEMPTS = 3  # curations redone when the owner's kept examples changed meanwhile


class ExampleConflict(ValueError):
    """A quarantine action the example's state does not allow (409)."""


class SubmissionError(ValueError):
    """A body or a conversation that cannot be taken; nothing of the request is stored."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One checked conversation: its messages (role and content), the weights given on them
    (message index: 0 or 1), and where it was in the submission."""

    messages: list[dict[str, str]]
    weights: dict[str, int]
    line: int | None = None  # in a JSONL body, from 1
    index: int | None = None  # in a JSON body's "examples", from 0

    @property
    def where(self) -> str:
        if self.line is not None:
            return f"line {self.line}"
        return f"examples[{self.index}]" if self.index is not None else "the conversation"


def _unicode(value: str) -> bool:
    """Whether a JSON string is Unicode text (JSON can spell unpaired surrogates; text cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _conversation(value: Any, prefix: str, *, line: int | None = None) -> Conversation:
    """``value`` checked as a conversation; ``prefix`` names it in errors ("line 3: ")."""

    def refuse(message: str, param: str | None = None) -> SubmissionError:
        return SubmissionError(f"{prefix}{message}", param)

    if not isinstance(value, dict):
        return_type = type(value).__name__ if value is not None else "null"
        raise refuse(f'not a conversation: expected {{"messages": [...]}}, got a {return_type}')
    if "messages" not in value and {"prompt", "completion"} & set(value):
        raise refuse(
            'a prompt/completion pair (the legacy format): send {"messages": [{"role": '
            '"user", ...}, {"role": "assistant", ...}]} instead',
            "messages",
        )
    unknown = sorted(set(value) - {"messages"})
    if unknown:
        raise refuse(
            f'unknown field {unknown[0]!r}: a conversation is {{"messages": [...]}} (text '
            "chats; tools and functions are not learned)",
            unknown[0],
        )
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        raise refuse("'messages' must be a non-empty list of messages", "messages")
    checked: list[dict[str, str]] = []
    weights: dict[str, int] = {}
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        param = f"messages.{i}"
        if not isinstance(message, dict):
            raise refuse(f"{at} must be an object with 'role' and 'content'", param)
        extra = sorted(set(message) - {"role", "content", "weight"})
        if extra:
            raise refuse(
                f"{at} has {extra[0]!r}: a message has 'role', 'content' and, on an assistant "
                "message, 'weight'",
                f"{param}.{extra[0]}",
            )
        role = message.get("role")
        if role not in _ROLES:
            raise refuse(
                f"{at}.role is {role!r}: use 'system', 'user' or 'assistant'", f"{param}.role"
            )
        content = message.get("content")
        if not isinstance(content, str) or not _unicode(content):
            raise refuse(f"{at}.content must be text (a string)", f"{param}.content")
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
                raise refuse(
                    f"{at}.weight must be 0 or 1, on an assistant message", f"{param}.weight"
                )
            weights[str(i)] = int(weight)
        checked.append({"role": str(role), "content": content})
    if checked[-1]["role"] != "assistant":
        raise refuse(
            "the last message must be the assistant's: it is the answer to learn",
            f"messages.{len(checked) - 1}.role",
        )
    if weights.get(str(len(checked) - 1)) == 0:
        raise refuse(
            "the last assistant message has weight 0, which leaves nothing to learn (selftune "
            "learns the last assistant turn): drop the conversation or its weight",
            f"messages.{len(checked) - 1}.weight",
        )
    return Conversation(checked, weights, line=line)


def parse_jsonl(body: bytes) -> list[Conversation]:
    """One conversation per line; blank lines are skipped, lines are counted from 1."""
    conversations = []
    for number, raw in enumerate(body.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SubmissionError(f"line {number}: not UTF-8 text") from None
        text = text.removeprefix("\ufeff") if number == 1 else text
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SubmissionError(f"line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise SubmissionError(f"line {number}: JSON nested too deeply") from None
        conversations.append(_conversation(value, f"line {number}: ", line=number))
    if not conversations:
        raise SubmissionError('no conversations: send one {"messages": [...]} per line')
    return conversations


def parse_json(body: bytes) -> list[Conversation]:
    """``{"messages": [...]}`` (one conversation) or ``{"examples": [{"messages": ...}, ...]}``."""
    if not body.strip():
        raise SubmissionError(
            'the request body is empty: send {"messages": [...]}, {"examples": [...]}, or a '
            "JSONL file with Content-Type: application/jsonl"
        )
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise SubmissionError("the request body is not valid JSON") from None
    if isinstance(value, dict) and "examples" in value:
        unknown = sorted(set(value) - {"examples"})
        if unknown:
            raise SubmissionError(f"unknown field {unknown[0]!r} next to 'examples'", unknown[0])
        examples = value["examples"]
        if not isinstance(examples, list) or not examples:
            raise SubmissionError("'examples' must be a non-empty list of conversations")
        return [
            dataclasses.replace(_conversation(item, f"examples[{i}]: "), index=i)
            for i, item in enumerate(examples)
        ]
    return [_conversation(value, "")]


# --- curation and storage -------------------------------------------------------------------
def kept_examples(session: Session, owner: str) -> list[Example]:
    """``owner``'s active examples as curation reads them, to deduplicate new ones against."""
    rows = session.execute(
        select(TrainingExample.id, TrainingExample.source, TrainingExample.messages)
        .where(TrainingExample.user_id == owner, TrainingExample.active)
        .order_by(TrainingExample.id)
    )
    return [
        Example(
            tuple(
                {"role": str(m.get("role", "")), "content": str(m.get("content") or "")}
                for m in messages
                if isinstance(m, dict)
            ),
            owner,
            source,
            id=f"example {example_id}",
        )
        for example_id, source, messages in rows
    ]


def _digest(messages: list[dict[str, Any]]) -> str:
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _curated(
    owner: str, conversations: list[Conversation], before: list[Example], policy: CurationPolicy
) -> tuple[list[tuple[str, Example, str | None, str | None]], CurationResult]:
    """Each conversation's (state, scrubbed example, reason, detail), and the totals."""
    curator = Curator(policy)
    for example in before:
        curator.remember(example)
    total = CurationResult()
    decided: list[tuple[str, Example, str | None, str | None]] = []
    for conversation in conversations:
        example = Example(tuple(conversation.messages), owner, SUBMITTED, id=conversation.where)
        decision = curator.decide(example, total)
        decided.append((decision.state, decision.example, decision.reason, decision.detail))
    # A flooded example of this request is held instead of kept; flooded earlier ones are
    # held when the request is stored (_store).
    for i, (conversation, (state, example, _reason, _detail)) in enumerate(
        zip(conversations, decided, strict=True)
    ):
        copies = total.floods.get(conversation.where)
        if state == "kept" and copies:
            decided[i] = ("flagged", example, Reason.FLOOD.value, _flood_detail(copies))
            total.kept.remove(example)
            total.flagged.append(Rejection(example, Reason.FLOOD, _flood_detail(copies)))
    return decided, total


def _flood_detail(copies: int) -> str:
    return (
        f"its contributor sent {copies} more copies of it: held for an admin to release or "
        "delete (docs/curation.md)"
    )


def _store(
    db: Database,
    owner: str,
    conversations: list[Conversation],
    decided: list[tuple[str, Example, str | None, str | None]],
    origin: dict[str, Any],
    seen: int | None,
    floods: dict[str, int],
) -> list[int] | None:
    """Store the curated conversations in one transaction; their ids in order. None (nothing
    stored) when ``owner`` has kept examples with ids past ``seen``, which curation missed."""
    with db.write() as session:
        if seen is not None and session.scalar(
            select(func.count())
            .select_from(TrainingExample)
            .where(
                TrainingExample.user_id == owner,
                TrainingExample.active,
                TrainingExample.id > seen,
            )
        ):
            return None
        ensure_user(session, owner)
        for key, copies in floods.items():
            earlier = key.removeprefix("example ")
            row = session.get(TrainingExample, int(earlier)) if earlier.isdigit() else None
            if row is not None and row.user_id == owner and row.state == "kept":
                row.state, row.active = "flagged", False
                row.reason, row.detail = Reason.FLOOD.value, _flood_detail(copies)
        rows = []
        for conversation, (state, example, reason, detail) in zip(
            conversations, decided, strict=True
        ):
            messages = [dict(m) for m in example.messages]
            provenance = {**origin, "sha256": _digest(messages)}
            if conversation.line is not None:
                provenance["line"] = conversation.line
            if conversation.index is not None:
                provenance["index"] = conversation.index
            if conversation.weights:
                provenance["weights"] = conversation.weights
            rows.append(
                TrainingExample(
                    user_id=owner,
                    source=SUBMITTED,
                    messages=messages,
                    active=state == "kept",
                    state=state,
                    reason=reason,
                    detail=detail,
                    provenance=provenance,
                )
            )
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def submit(
    db: Database,
    owner: str,
    conversations: list[Conversation],
    origin: dict[str, Any],
    policy: CurationPolicy | None = None,
) -> dict[str, Any]:
    """Curate ``conversations`` against ``owner``'s kept examples and store them all, in one
    transaction committed before this returns. ``origin`` goes into each one's provenance
    (``{"importer": "api", "format": "jsonl", "file": ...}``). Returns the counts, reasons,
    the ids in submission order, and each example not kept with why."""
    policy = policy or CurationPolicy()
    ids: list[int] | None = None
    for attempt in range(_ATTEMPTS):
        # Curated outside the write transaction, which stays short; redone when the owner's
        # kept examples changed meanwhile (another submission), so no duplicate slips between
        # two (the last attempt stores regardless).
        with db.read() as session:
            seen = session.scalar(select(func.max(TrainingExample.id))) or 0
            before = kept_examples(session, owner)
        decided, total = _curated(owner, conversations, before, policy)
        last = attempt == _ATTEMPTS - 1
        floods = total.floods
        ids = _store(db, owner, conversations, decided, origin, None if last else seen, floods)
        if ids is not None:
            break
    assert ids is not None  # the last attempt always stores
    not_kept = [
        {
            "id": row_id,
            "line": conversation.line,
            "index": conversation.index,
            "state": state,
            "reason": reason,
            "detail": detail,
        }
        for row_id, conversation, (state, _example, reason, detail) in zip(
            ids, conversations, decided, strict=True
        )
        if state != "kept"
    ]
    reasons = Counter(r.reason.value for r in [*total.rejected, *total.flagged])
    return {
        "held_earlier": sorted(  # earlier examples now held for review (flooded)
            int(key.removeprefix("example "))
            for key in total.floods
            if key.startswith("example ") and key.removeprefix("example ").isdigit()
        ),
        "kept": len(total.kept),
        "rejected": len(total.rejected),
        "flagged": len(total.flagged),
        "reasons": dict(sorted(reasons.items())),
        "scrubbed": dict(sorted(total.scrubbed.items())),
        "ids": ids,
        "not_kept": not_kept,
    }


# --- reading them back ----------------------------------------------------------------------
def _with_weights(messages: list[Any], provenance: dict[str, Any] | None) -> list[Any]:
    weights = (provenance or {}).get("weights") or {}
    if not weights:
        return messages
    return [
        {**m, "weight": weights[str(i)]} if str(i) in weights else m for i, m in enumerate(messages)
    ]


def example_view(row: TrainingExample) -> dict[str, Any]:
    return {
        "id": row.id,
        "user": row.user_id,
        "source": row.source,
        "state": row.state,
        "active": row.active,
        "reason": row.reason,
        "detail": row.detail,
        "provenance": row.provenance,
        "created_at": as_utc(row.created_at).isoformat(timespec="seconds"),
        "messages": row.messages,
    }


def list_examples(
    db: Database,
    owner: str | None,
    *,
    source: str | None = None,
    state: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], bool]:
    """Examples by id from ``after`` on (``owner``'s, or everyone's for None), at most
    ``limit``, and whether more follow."""
    query = select(TrainingExample).where(TrainingExample.id > after)
    if owner is not None:
        query = query.where(TrainingExample.user_id == owner)
    if source is not None:
        query = query.where(TrainingExample.source == source)
    if state is not None:
        query = query.where(TrainingExample.state == state)
    with db.read() as session:
        rows = list(session.scalars(query.order_by(TrainingExample.id).limit(limit + 1)))
        return [example_view(row) for row in rows[:limit]], len(rows) > limit


def export_lines(
    db: Database, owner: str | None, source: str | None = None, batch: int = 500
) -> Iterator[str]:
    """The examples training uses (active), ``owner``'s or everyone's, as JSONL lines of
    ``{"messages": [...]}`` in id order, with their weights; read ``batch`` at a time."""
    after = 0
    while True:
        query = select(
            TrainingExample.id, TrainingExample.messages, TrainingExample.provenance
        ).where(TrainingExample.active, TrainingExample.id > after)
        if owner is not None:
            query = query.where(TrainingExample.user_id == owner)
        if source is not None:
            query = query.where(TrainingExample.source == source)
        with db.read() as session:
            rows = session.execute(query.order_by(TrainingExample.id).limit(batch)).all()
        if not rows:
            return
        for _id, messages, provenance in rows:
            line = {"messages": _with_weights(messages, provenance)}
            yield json.dumps(line, ensure_ascii=False) + "\n"
        after = rows[-1][0]


# --- the quarantine -------------------------------------------------------------------------
def release_example(db: Database, example_id: int, actor: str) -> dict[str, Any] | None:
    """Let training use a flagged (quarantined) example: kept and active, the flag's reason
    kept in its provenance with who released it. None: no such example."""
    with db.write() as session:
        row = session.get(TrainingExample, example_id)
        if row is None:
            return None
        if row.state != "flagged":
            raise ExampleConflict(
                f"example {example_id} is {row.state}, not flagged: only quarantined examples "
                "are released"
            )
        released = {"reason": row.reason, "detail": row.detail, "by": actor}
        row.provenance = {**(row.provenance or {}), "released": released}
        row.state, row.active, row.reason, row.detail = "kept", True, None, None
        session.flush()
        return example_view(row)


def remove_example(db: Database, example_id: int) -> bool:
    """Delete an example that no version trained on or was judged on (a version's lineage
    keeps its examples); False: no such example."""
    with db.write() as session:
        row = session.get(TrainingExample, example_id)
        if row is None:
            return False
        used = session.scalar(
            select(VersionExample.version_id).where(VersionExample.example_id == example_id)
        )
        if used is not None:
            raise ExampleConflict(
                f"example {example_id} trained or judged a version, whose lineage keeps it; "
                "roll back or leave it (it is kept as the record of what that version saw)"
            )
        session.delete(row)
        return True
