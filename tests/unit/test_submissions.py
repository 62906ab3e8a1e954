"""Submitted examples (selftune.data.submissions): the checks' messages, and curation redone
when the owner's examples changed while it ran."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import select

from selftune.data import submissions
from selftune.store import Database
from selftune.store.schema import TrainingExample

CHAT = {
    "messages": [
        {"role": "user", "content": "How long do I boil an egg?"},
        {"role": "assistant", "content": "Nine minutes for a firm yolk, then cool it in water."},
    ]
}


def test_weights_are_kept_apart_from_the_messages_training_reads() -> None:
    weighted = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello.", "weight": 0},
            {"role": "user", "content": "Boil an egg?"},
            {"role": "assistant", "content": "Nine minutes.", "weight": 1},
        ]
    }
    [conversation] = submissions.parse_jsonl(json.dumps(weighted).encode())
    assert all(set(m) == {"role", "content"} for m in conversation.messages)
    assert conversation.weights == {"1": 0, "3": 1} and conversation.line == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no conversations"),
        (b"\n\n", "no conversations"),
        (b'{"messages": [{"role": "user", "content": "x", "weight": 1}]}', "messages[0].weight"),
        (b'{"messages": [{"role": "assistant", "content": "x", "name": "bot"}]}', "'name'"),
        (b'{"messages": [{"role": "assistant", "content": "x", "weight": true}]}', "weight"),
    ],
)
def test_jsonl_errors_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(submissions.SubmissionError, match=re.escape(message)):
        submissions.parse_jsonl(body)


def test_a_byte_order_mark_and_windows_line_ends_are_taken() -> None:
    body = b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\r\n" + json.dumps(CHAT).encode()
    assert [c.line for c in submissions.parse_jsonl(body)] == [1, 2]


def test_curation_is_redone_when_the_owner_kept_an_example_meanwhile(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another submission of the same chat commits while this one curates: the retry sees it,
    so the chat is not kept twice."""
    curated = submissions._curated
    calls = []

    def racing(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the other upload lands between this read and this write
            origin = {"importer": "api", "format": "json"}
            submissions.submit(db, "u", submissions.parse_json(json.dumps(CHAT).encode()), origin)
        return curated(*args)

    monkeypatch.setattr(submissions, "_curated", racing)
    body = json.dumps(CHAT).encode()
    answer = submissions.submit(db, "u", submissions.parse_jsonl(body), {"importer": "api"})
    assert answer["reasons"] == {"exact_duplicate": 1}
    with db.read() as session:
        states = session.scalars(select(TrainingExample.state).order_by(TrainingExample.id)).all()
    assert states == ["kept", "rejected"]
    assert len(calls) == 3  # this upload's two attempts, and the other upload's one


def test_json_nested_past_the_parsers_depth_is_refused_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for parse in (submissions.parse_json, submissions.parse_jsonl):
        with pytest.raises(submissions.SubmissionError):
            parse(deep)
