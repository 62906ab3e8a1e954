"""Quality filters: chats not worth training on, each rejected with a named reason.

A fine-tune learns from few examples, so one broken example (an empty answer, a loop of repeated
text, binary garbage pasted into a chat) weighs a lot. The checks are cheap, explainable rules
rather than a model: each rejection says which rule and by how much.

Language: no detector is used. The maintained offline detectors are either a sizeable model
(lingua) or unmaintained (langdetect, langid), so language is filtered only where the caller knows
it (``Example.language``) and the policy lists the languages to train on.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import Counter

from selftune.curate.example import Example, chat_text

__all__ = ["QualitySettings", "Reason", "Rejection", "quality_rejection"]


class Reason(enum.StrEnum):
    """Why an example was rejected or flagged; stored with it."""

    MALFORMED = "malformed"  # no messages, or the last is not the assistant's
    EMPTY_ANSWER = "empty_answer"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    REPETITIVE = "repetitive"
    NON_TEXT = "non_text"
    LANGUAGE = "language"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    CONFLICTING_ANSWER = "conflicting_answer"  # a flag: the same prompt, a different answer
    FLOOD = "flood"  # a flag: one contributor sent many near-copies of it (a poisoning pattern)


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An example left out of training (or flagged for review), with why: the reason and a
    detail a person can check, such as the measured share and its limit."""

    example: Example
    reason: Reason
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class QualitySettings:
    """The quality thresholds, measured on the user and assistant turns together."""

    min_chars: int = 8  # fewer characters of chat text is too little to learn from
    max_chars: int = 32_000  # more is a paste, not a conversation (and overflows a context)
    repetition_ngram: int = 3  # words per n-gram for the repetition check
    max_repeated_ngram_share: float = 0.3  # share of n-grams that repeat an earlier one
    min_ngrams_for_repetition: int = 10  # shorter texts are not judged for repetition
    max_char_run: int = 64  # one character this many times in a row is filler
    min_letter_share: float = 0.25  # letters among non-space characters (code is about 0.6)
    max_garbage_share: float = 0.01  # control, private-use and replacement characters
    languages: tuple[str, ...] = ()  # ISO 639-1 codes to train on; empty accepts any

    def __post_init__(self) -> None:
        if not 0 < self.min_chars < self.max_chars:
            raise ValueError("need 0 < min_chars < max_chars")
        for name in ("max_repeated_ngram_share", "min_letter_share", "max_garbage_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a share: give a number from 0 to 1")


# Characters that no one types: controls other than tab and newlines, surrogates, private-use
# code points, and U+FFFD, the mark of bytes that were not valid text.
_GARBAGE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufffd\U000f0000-\U0010ffff]"
)
_LETTER = re.compile(r"[^\W\d_]")  # a letter of any script
_VISIBLE = re.compile(r"\S")


def _garbage_share(text: str) -> float:
    return len(_GARBAGE.findall(text)) / len(text)


def _letter_share(text: str) -> float:
    visible = len(_VISIBLE.findall(text))
    return len(_LETTER.findall(text)) / visible if visible else 0.0


def _repeated_ngram_share(words: list[str], n: int) -> tuple[float, int]:
    """Share of word n-grams that repeat an earlier n-gram, and how many n-grams there are."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0, 0
    return 1 - len(Counter(grams)) / len(grams), len(grams)


def quality_rejection(example: Example, settings: QualitySettings) -> Rejection | None:
    """The first quality rule ``example`` breaks, as a rejection; None when it passes all."""

    def reject(reason: Reason, detail: str = "") -> Rejection:
        return Rejection(example, reason, detail)

    if not example.messages or example.messages[-1].get("role") != "assistant":
        return reject(Reason.MALFORMED, "the last message must be the assistant's")
    if not example.answer.strip():
        return reject(Reason.EMPTY_ANSWER)
    if settings.languages and example.language and example.language not in settings.languages:
        return reject(Reason.LANGUAGE, f"{example.language} not in {', '.join(settings.languages)}")
    text = chat_text(example)
    if len(text) < settings.min_chars:
        return reject(Reason.TOO_SHORT, f"{len(text)} < {settings.min_chars} characters")
    if len(text) > settings.max_chars:
        return reject(Reason.TOO_LONG, f"{len(text)} > {settings.max_chars} characters")
    garbage = _garbage_share(text)
    if garbage > settings.max_garbage_share:
        return reject(Reason.NON_TEXT, f"{garbage:.1%} unprintable characters")
    letters = _letter_share(text)
    if letters < settings.min_letter_share:
        return reject(Reason.NON_TEXT, f"{letters:.0%} letters < {settings.min_letter_share:.0%}")
    run = re.search(rf"(.)\1{{{settings.max_char_run - 1},}}", text, re.DOTALL)
    if run and not run.group(1).isspace():
        return reject(Reason.REPETITIVE, f"{run.group(1)!r} repeated {len(run.group())} times")
    share, count = _repeated_ngram_share(text.casefold().split(), settings.repetition_ngram)
    if count >= settings.min_ngrams_for_repetition and share > settings.max_repeated_ngram_share:
        return reject(
            Reason.REPETITIVE,
            f"{share:.0%} of word {settings.repetition_ngram}-grams repeat"
            f" > {settings.max_repeated_ngram_share:.0%}",
        )
    return None
