"""Does an answer mention a word, phrase or number? Matching at word and number boundaries.

A substring test counts "-10" as saying that water freezes at "0" and "Parisian" as "Paris".
Here a word matches only whole (letters and digits on neither side), case-insensitively, and a
number only as a whole number: its minus sign belongs to it ("-10" does not mention "10"), so do
its decimals and digit groups ("10.5" and "1,000" mention neither "10" nor "1"), while "10."
ending a sentence mentions "10". A hyphen between a word or number and a number is a range or a
compound, not a sign ("5-10" mentions "10"). The words of a phrase may be separated by any
whitespace. Text is compared in Unicode normal form NFC, so composed and decomposed accents
match, with the minus sign (U+2212) read as a hyphen-minus.

:func:`words` splits text into the same tokens, for :mod:`selftune.evaluation.recall`.
"""

from __future__ import annotations

import functools
import re
import unicodedata

__all__ = ["mention_end", "mentions", "words"]

_MINUS = "-"  # hyphen-minus; the minus sign (U+2212) is read as one (see _normal)
_ALNUM = r"[^\W_]"  # a letter or a digit
# Before a token: no letter or digit; no digit and a decimal point or group separator ("0.5",
# "1,000"); no minus sign, a hyphen not joined to a word or number before it.
_BEFORE = rf"(?<!{_ALNUM})(?<!\d[.,])(?:(?<![{_MINUS}])|(?<={_ALNUM}[{_MINUS}]))"
_BEFORE_WORD = rf"(?<!{_ALNUM})"
# After a token: no letter or digit; no decimal point or separator followed by a digit.
_AFTER = rf"(?!{_ALNUM})(?![.,]\d)"
_AFTER_WORD = rf"(?!{_ALNUM})"

# A token: an optional minus sign (not a hyphen joined to what comes before) before a digit,
# then letters and digits, joined by apostrophes (Veloria's) or, between digits, by a decimal
# point or a group separator (3.5, 1,000).
_TOKEN = re.compile(
    rf"(?:(?<!{_ALNUM})[{_MINUS}](?=\d))?{_ALNUM}+"
    rf"(?:(?:['\u2019]|(?<=\d)[.,](?=\d)){_ALNUM}+)*"
)


def _normal(text: str) -> str:
    return unicodedata.normalize("NFC", text).replace("\u2212", "-")


@functools.lru_cache(maxsize=256)
def _pattern(expected: str) -> re.Pattern[str] | None:
    parts = _normal(expected).split()
    if not parts:
        return None
    phrase = r"\s+".join(re.escape(part) for part in parts)
    first, last = parts[0][0], parts[-1][-1]
    # Guards apply where the phrase begins or ends with a letter or digit: "C++" needs none after
    # it. A number's guards are a number's; a word's only keep it from being part of a word.
    before = ""
    if first.isalnum() or first in _MINUS:
        starts_number = first.isdigit() or first in _MINUS
        before = _BEFORE if starts_number else _BEFORE_WORD
    after = (_AFTER if last.isdigit() else _AFTER_WORD) if last.isalnum() else ""
    return re.compile(before + phrase + after, re.IGNORECASE)


def mentions(answer: str, expected: str) -> bool:
    """Whether ``answer`` contains ``expected`` (a word, number or phrase) whole: at word and
    number boundaries, in any case, with any whitespace between a phrase's words. Nothing is
    mentioned by an empty ``expected``."""
    pattern = _pattern(expected)
    return pattern is not None and pattern.search(_normal(answer)) is not None


def mention_end(answer: str, expected: str) -> int | None:
    """Where the first whole mention of ``expected`` in ``answer`` ends (an index into
    ``answer`` in Unicode normal form NFC), or None if there is none."""
    pattern = _pattern(expected)
    found = pattern.search(_normal(answer)) if pattern is not None else None
    return found.end() if found is not None else None


def words(text: str) -> list[str]:
    """The lowercased tokens of ``text``: words (with their apostrophes), and numbers with their
    minus sign (as "-"), decimals and digit groups."""
    return _TOKEN.findall(_normal(text).lower())
