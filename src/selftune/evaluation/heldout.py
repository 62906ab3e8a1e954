"""Held-out recall: how much of what a version was taught a model's greedy answers contain.

The gate measures it for a candidate and for the version served now; an export check measures it
for a merged, possibly quantized, export of a version. Both call :func:`heldout_recall`, so a
version's gate figure and its exports' figures are the same measurement on the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selftune.engines.base import AdapterRef, EvaluatingEngine
from selftune.evaluation.probes import generate_answers
from selftune.evaluation.recall import answer_recall, key_terms

__all__ = ["Chat", "heldout_recall"]

Chat = list[dict[str, Any]]  # chat messages; the last one is the target answer
# Answers are cut at the longest target plus this many tokens (at most _MAX_ANSWER_TOKENS):
# the taught terms come within the length of the taught answer, and a short cap keeps it fast.
_SLACK_TOKENS = 16
_MAX_ANSWER_TOKENS = 96


def heldout_recall(
    engine: EvaluatingEngine, chats: Sequence[Chat], adapter: AdapterRef | None
) -> float | None:
    """Mean share of each target answer's key terms found in the greedy answer to its prompt.

    ``adapter`` None answers with the engine's model alone (the base, or a merged export).
    Examples whose target has no key terms (nothing beyond the question's words) are skipped;
    None when no example has any. Rounded to 4 decimals, as the gate stores it.
    """
    prompts, terms = [], []
    for chat in chats:
        prompt, target = chat[:-1], chat[-1]["content"]
        wanted = key_terms(target, [m["content"] for m in prompt])
        if wanted:
            prompts.append(prompt)
            terms.append(wanted)
    if not prompts:
        return None
    longest = max(engine.count_tokens(chat[-1]["content"]) for chat in chats)
    budget = min(_MAX_ANSWER_TOKENS, longest + _SLACK_TOKENS)
    answers = generate_answers(engine, prompts, adapter, budget)
    scores = [answer_recall(a, t) or 0.0 for a, t in zip(answers, terms, strict=True)]
    return round(sum(scores) / len(scores), 4)
