"""More ways to ask for what a correction teaches, so that it is learned beyond one wording.

Trained only on "What colour is the Harrowgate Bridge painted?", a small model learns that
question's words, and a paraphrase ("In which colour is the Harrowgate Bridge painted?") gets the
old answer. Each corrected single-turn chat whose question names a subject (its longest run of
capitalised words that the answer names too, see :mod:`selftune.data.neighbours`) also teaches
its answer to open requests about that subject ("Tell me about the Harrowgate Bridge."), which
ties the fact to the subject rather than to the question's wording, and to the question
reworded in ways that keep its meaning (a request instead of a question, lower case). None of
this uses any evaluation set's wording: the forms are fixed and generic.
"""

from __future__ import annotations

from typing import Any

from selftune.data.neighbours import name_spans

__all__ = ["answered_subject", "augmented_chats"]

# Open requests about the subject: answered with the taught sentence, which names it.
_ABOUT = ("Tell me about {s}.", "What do you know about {s}?")


def _rewordings(question: str) -> list[str]:
    """The question as a request and in lower case, its meaning kept."""
    stripped = question.rstrip(" ?.!")
    lowered = stripped[0].lower() + stripped[1:] if stripped else stripped
    return [f"Please answer: {lowered}?", f"{lowered}?"]


def answered_subject(question: str, answer: str) -> str | None:
    """The longest name ``question`` holds that ``answer`` names too (as written in the
    question), or None. ("What does “Notes on Kern” say about the Vell Dam?" is about the Vell
    Dam, not the notes.)"""
    names = [question[start:end] for start, end in name_spans(question)]
    return next((name for name in names if name.lower() in answer.lower()), None)


def augmented_chats(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Further chats teaching the answer of ``messages`` (a user question and the assistant's
    answer, plain text); [] for anything else, or a question that names no subject."""
    if len(messages) != 2 or [m.get("role") for m in messages] != ["user", "assistant"]:
        return []
    question, answer = messages[0].get("content"), messages[1].get("content")
    if not isinstance(question, str) or not isinstance(answer, str):
        return []
    # Asked openly about a name the answer does not mention, the answer would mislead.
    subject = answered_subject(question, answer)
    if subject is None:
        return []
    prompts = [form.format(s=subject) for form in _ABOUT] + _rewordings(question)
    return [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        for prompt in prompts
        if prompt != question
    ]
