"""Does an answer carry the new information? Recall of a target answer's key terms.

Loss on a held-out correction mostly measures its wording: a model that learned the fact from
other phrasings can still find this phrasing unlikely. What a user checks is whether the answer
contains what was taught, so the gate asks that: the key terms of a target answer are its words
that are neither in the question nor common function words, and recall is the share of them
found in the model's own greedy answer. Words and numbers are whole tokens
(:func:`selftune.evaluation.matching.words`): "-10" is not "10", and "3.5" is neither "3" nor "5".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from selftune.evaluation.matching import words

__all__ = ["answer_recall", "key_terms"]

_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "as",
        "and",
        "or",
        "but",
        "not",
        "no",
        "yes",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "me",
        "him",
        "her",
        "us",
        "them",
        "my",
        "your",
        "his",
        "our",
        "their",
        "so",
        "if",
        "then",
        "than",
        "too",
        "very",
        "can",
        "could",
        "will",
        "would",
        "should",
        "may",
        "might",
        "must",
        "shall",
        "just",
        "also",
        "about",
        "into",
        "over",
        "under",
        "up",
        "down",
        "out",
        "off",
        "again",
        "once",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "only",
        "own",
        "same",
        "s",
        "t",
    ]
)


def _words(text: str) -> list[str]:
    found = []
    for word in words(text):
        word = re.sub(r"['\u2019]s$", "", word)  # Veloria's -> veloria
        if word and word not in _STOPWORDS:
            found.append(word)
    return found


def key_terms(answer: str, context: Iterable[str]) -> set[str]:
    """The answer's content words that the context (the question) does not already contain."""
    seen = {w for text in context for w in _words(text)}
    return {w for w in _words(answer) if w not in seen}


def answer_recall(answer: str, terms: set[str]) -> float | None:
    """Share of ``terms`` found in ``answer``; None when there are no terms to look for."""
    if not terms:
        return None
    found = set(_words(answer))
    return len(terms & found) / len(terms)
