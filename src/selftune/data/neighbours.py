"""Neighbour prompts: the taught question's shape about other subjects, to hold while teaching.

Taught that a made-up bridge is painted teal, a small model also starts to paint the sky teal:
the fact leaks into every question of the same shape ("over-editing"). Neighbour-assisted
editing holds the model to what the base answered on questions of the taught question's shape
about other subjects. Here they are made by putting other real subjects (:data:`SUBJECTS`) in
place of the taught question's named subject (its run of capitalised words), every other one
also cut short after the subject (a looser question of the same kind); the base model's own
answers to them then join the replay set, held by its KL term.

The subjects are deliberately unrelated to any evaluation set (the knowledge-editing benchmark
checks that none of its neighbour prompts names one), so what holds them is the recipe, not a
memorised test.
"""

from __future__ import annotations

import hashlib
import random
import re

__all__ = ["SUBJECTS", "name_spans", "neighbour_questions", "subject_span"]

SUBJECTS: tuple[str, ...] = (
    "the Eiffel Tower",
    "the Golden Gate Bridge",
    "the Amazon River",
    "Mount Everest",
    "the Great Wall of China",
    "the Statue of Liberty",
    "the Sahara Desert",
    "Canada",
    "Australia",
    "Egypt",
    "Brazil",
    "Sweden",
    "Kenya",
    "Argentina",
    "the Red Cross",
    "the United Nations",
    "Harvard University",
    "the Olympic Games",
    "Isaac Newton",
    "Marie Curie",
    "Charles Darwin",
    "Leonardo da Vinci",
    "Mount Fuji",
    "Jupiter",
    "the Nile",
    "Tokyo",
    "Paris",
    "New York",
    "Rome",
    "the Pacific Ocean",
    "the Taj Mahal",
    "Big Ben",
    "the Colosseum",
    "Antarctica",
    "Mozart",
    "the Louvre",
)

# Words that start a sentence, a question or a request with a capital without naming anything.
_OPENERS = frozenset(
    {"what", "which", "who", "whom", "whose", "when", "where", "why", "how", "tell", "name"}
    | {"give", "in", "on", "at", "is", "are", "was", "were", "do", "does", "did", "can"}
    | {"could", "please", "list", "describe", "explain", "i", "write", "say", "suggest"}
    | {"translate", "define", "summarize", "summarise", "compare", "calculate", "find", "show"}
    | {"help", "make", "create", "why", "should", "would", "will", "has", "have", "if"}
)
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*|\d[\w.,]*", re.UNICODE)
# Lower-case words that may sit inside a name: "the Treaty of Vellmor", "Leonardo da Vinci".
_JOINERS = frozenset({"of", "de", "da", "del", "van", "von", "the", "and"})


def subject_span(question: str) -> tuple[int, int] | None:
    """Character span of the question's named subject: its longest run of capitalised words
    (joined by "of", "da" and the like), a leading "the" included; None when it names none."""
    spans = name_spans(question)
    return spans[0] if spans else None


def name_spans(question: str) -> list[tuple[int, int]]:
    """Character spans of every run of capitalised words in ``question`` (as
    :func:`subject_span` finds them), longest first."""
    words = list(_WORD.finditer(question))
    found: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        text = words[i].group()
        if not text[0].isupper() or (i == 0 and text.lower() in _OPENERS):
            i += 1
            continue
        start = end = i
        j = i + 1
        while j < len(words):
            nxt = words[j].group()
            if nxt[0].isupper():
                end = j
            elif nxt.lower() not in _JOINERS:
                break
            j += 1
        first = words[start].start()
        if start > 0 and words[start - 1].group().lower() == "the":
            first = words[start - 1].start()
        last = re.sub(r"['\u2019]s$", "", words[end].group())
        found.append((first, words[end].start() + len(last)))
        i = end + 1
    return sorted(found, key=lambda span: span[0] - span[1])  # stable: the first of equals


def neighbour_questions(question: str, count: int) -> list[str]:
    """Up to ``count`` questions of ``question``'s shape about other subjects (none if it
    names no subject), the same ones for the same question."""
    span = subject_span(question)
    if span is None or count <= 0:
        return []
    named = question[span[0] : span[1]].lower()
    rng = random.Random(hashlib.sha256(question.encode()).digest())
    others = [s for s in SUBJECTS if s.lower() != named]
    chosen = rng.sample(others, min(count, len(others)))
    at_start = span[0] == 0
    tail = question[span[1] :]
    # Every other one ends at the subject ("What colour is the Eiffel Tower?" beside "What
    # colour is the Eiffel Tower painted?"): the same kind of question in other words.
    short = "?" if tail.rstrip(" ?.!") and not at_start else None
    made = []
    for index, subject in enumerate(chosen):
        text = subject[0].upper() + subject[1:] if at_start else subject
        ending = short if short is not None and index % 2 else tail
        made.append(question[: span[0]] + text + ending)
    return made
