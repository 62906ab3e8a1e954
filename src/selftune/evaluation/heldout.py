"""Held-out recall: how much of what a version was taught a model's greedy answers contain.

The gate measures it for a candidate and for the version served now; an export check measures it
for a merged, possibly quantized, export of a version. Both call :func:`judge_heldout` (the gate
keeps each example's answers, to show what it decided on; the check, :func:`heldout_recall`, the
mean), so a version's gate figure and its exports' figures are the same measurement on the same
examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from selftune.engines.base import AdapterRef, EvaluatingEngine
from selftune.evaluation.probes import generate_answers
from selftune.evaluation.recall import answer_recall, key_terms

__all__ = ["Chat", "HeldoutItem", "HeldoutResult", "heldout_recall", "judge_heldout"]

Chat = list[dict[str, Any]]  # chat messages; the last one is the target answer
# Answers are cut at the longest target plus this many tokens (at most _MAX_ANSWER_TOKENS):
# the taught terms come within the length of the taught answer, and a short cap keeps it fast.
_SLACK_TOKENS = 16
_MAX_ANSWER_TOKENS = 96


@dataclasses.dataclass(frozen=True)
class HeldoutItem:
    """One judged example: its question, the key terms looked for, the answer and its recall."""

    question: str  # the prompt's last message
    expected_terms: tuple[str, ...]  # sorted
    answer: str
    recall: float  # rounded to 4 decimals


@dataclasses.dataclass(frozen=True)
class HeldoutResult:
    """The mean recall (None: no example has key terms) and each judged example."""

    recall: float | None
    items: tuple[HeldoutItem, ...]


def judge_heldout(
    engine: EvaluatingEngine, chats: Sequence[Chat], adapter: AdapterRef | None
) -> HeldoutResult:
    """Each target answer's key terms, the greedy answer to its prompt and the share of the
    terms it contains, and their mean.

    ``adapter`` None answers with the engine's model alone (the base, or a merged export).
    Examples whose target has no key terms (nothing beyond the question's words) are skipped
    (not in ``items``); the mean is None when no example has any. Rounded to 4 decimals, as
    the gate stores it.
    """
    prompts, terms = [], []
    for chat in chats:
        prompt, target = chat[:-1], chat[-1]["content"]
        wanted = key_terms(target, [m["content"] for m in prompt])
        if wanted:
            prompts.append(prompt)
            terms.append(wanted)
    if not prompts:
        return HeldoutResult(None, ())
    longest = max(engine.count_tokens(chat[-1]["content"]) for chat in chats)
    budget = min(_MAX_ANSWER_TOKENS, longest + _SLACK_TOKENS)
    answers = generate_answers(engine, prompts, adapter, budget)
    scores = [answer_recall(a, t) or 0.0 for a, t in zip(answers, terms, strict=True)]
    items = tuple(
        HeldoutItem(str(prompt[-1]["content"]), tuple(sorted(wanted)), answer, round(score, 4))
        for prompt, wanted, answer, score in zip(prompts, terms, answers, scores, strict=True)
    )
    return HeldoutResult(round(sum(scores) / len(scores), 4), items)


def heldout_recall(
    engine: EvaluatingEngine, chats: Sequence[Chat], adapter: AdapterRef | None
) -> float | None:
    """Mean share of each target answer's key terms found in the greedy answer to its prompt:
    :func:`judge_heldout`'s mean. None when no example has key terms."""
    return judge_heldout(engine, chats, adapter).recall
