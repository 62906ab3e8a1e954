"""Turn feedback into training examples.

A correction is the answer the user wanted: the example is the conversation with the correction
in place of the served answer. A positive rating keeps the served answer. A negative rating
without a correction withdraws any example made from that interaction. The newest feedback on
an interaction decides, so an interaction yields at most one active example.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from selftune.store.schema import Feedback, Interaction, TrainingExample

__all__ = ["active_examples", "example_from_feedback"]


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


def active_examples(session: Session) -> list[TrainingExample]:
    return list(
        session.scalars(
            select(TrainingExample).where(TrainingExample.active).order_by(TrainingExample.id)
        )
    )
