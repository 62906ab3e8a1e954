"""Turn feedback into training examples.

Behind the proxy (api/proxy.py) an upstream server's chat answers are examples too
(distillation), as ``proxy.keep`` says: every one, a random share, or only those rated +1 (which
the rating makes, as any rated answer). The newest feedback still decides: a -1 withdraws one.

A correction is the answer the user wanted: the example is the conversation with the correction
in place of the served answer. A positive rating keeps the served answer. A negative rating
without a correction withdraws any example made from that interaction. The newest feedback on
an interaction decides, so an interaction yields at most one active example.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

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
    example = TrainingExample(
        user_id=interaction.user_id,
        source=source,
        interaction_id=interaction.id,
        feedback_id=feedback.id,
        messages=messages,
        active=True,
    )
    session.add(example)
    session.flush()
    return example


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
