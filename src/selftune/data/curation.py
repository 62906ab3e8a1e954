"""Turn feedback into training examples.

Behind the proxy (api/proxy.py) an upstream server's chat answers are examples too
(distillation), as ``proxy.keep`` says: every one, a random share, or only those rated +1 (which
the rating makes, as any rated answer). The newest feedback still decides: a -1 withdraws one.

A correction is the answer the user wanted: the example is the conversation with the correction
in place of the served answer. A positive rating keeps the served answer. A negative rating
without a correction withdraws any example made from that interaction. The newest feedback on
an interaction decides, so an interaction yields at most one active example.

Like every example, one made from feedback is scrubbed of personal data and checked for
quality before it is stored (``selftune.curate``); one that fails is stored inactive with its
reason. It is not deduplicated: rating or correcting one more chat the same way is how a person
says the lesson matters, and the training queue's caps bound any one user's share.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from selftune.curate import Example, QualitySettings, quality_rejection, scrub
from selftune.store.schema import Feedback, Interaction, TrainingExample

__all__ = ["UPSTREAM", "active_examples", "example_from_feedback", "upstream_example"]

UPSTREAM = "upstream"  # the source of examples made from an upstream server's answers


def example_from_feedback(
    session: Session, interaction: Interaction, feedback: Feedback
) -> TrainingExample | None:
    """Record what ``feedback`` teaches; returns the new example, if any. Caller commits."""
    session.execute(
        update(TrainingExample)
        .where(TrainingExample.interaction_id == interaction.id, TrainingExample.active)
        .values(active=False)
    )
    if interaction.kind != "chat":
        return None  # raw completions have no turns to learn from
    if feedback.correction:
        answer, source = feedback.correction, "correction"
    elif feedback.rating > 0:
        answer, source = interaction.response, "rating"
    else:
        return None
    messages: list[dict[str, Any]] = [
        *interaction.messages,
        {"role": "assistant", "content": answer},
    ]
    messages, scrubbed = _scrubbed(messages)
    rejection = quality_rejection(
        Example(tuple(_text_turns(messages)), interaction.user_id, source), QualitySettings()
    )
    example = TrainingExample(
        user_id=interaction.user_id,
        source=source,
        interaction_id=interaction.id,
        feedback_id=feedback.id,
        messages=messages,
        active=rejection is None,
        state="kept" if rejection is None else "rejected",
        reason=None if rejection is None else rejection.reason.value,
        detail=None if rejection is None else rejection.detail,
        provenance={"importer": "feedback", "scrubbed": scrubbed} if scrubbed else None,
    )
    session.add(example)
    session.flush()
    return example


def _scrubbed(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The messages with personal data in their text replaced, and how many items per kind."""
    found: Counter[str] = Counter()
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            result = scrub(content)
            found.update(result.found)
            message = {**message, "content": result.text}
        out.append(message)
    return out, dict(sorted(found.items()))


def _text_turns(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages as curation reads them: role and text content."""
    return [
        {"role": str(m.get("role", "")), "content": m.get("content") or ""}
        for m in messages
        if isinstance(m.get("content") or "", str)
    ]


def upstream_example(
    kind: str,
    messages: list[dict[str, Any]],
    answer: str,
    keep: Literal["all", "sample", "rated"],
    sample_share: float,
    rng: random.Random | None = None,
) -> dict[str, Any] | None:
    """The example (``source`` and ``messages``) to record with an upstream answer, or None
    when ``keep`` does not keep it now ("rated": a +1 rating makes it later)."""
    if kind != "chat" or not answer:
        return None
    if keep == "rated" or (keep == "sample" and (rng or random).random() >= sample_share):
        return None
    return {"source": UPSTREAM, "messages": [*messages, {"role": "assistant", "content": answer}]}


def active_examples(session: Session) -> list[TrainingExample]:
    return list(
        session.scalars(
            select(TrainingExample).where(TrainingExample.active).order_by(TrainingExample.id)
        )
    )
