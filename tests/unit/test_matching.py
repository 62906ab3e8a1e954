"""Whole-word matching: what counts as an answer mentioning an expected word, phrase or number."""

from __future__ import annotations

import pytest

from selftune.evaluation.matching import mentions, words
from selftune.evaluation.probes import RegressionItem


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # numbers, whole
        ("Water freezes at 0 degrees Celsius.", "0"),
        ("It freezes at 0°C.", "0"),
        ("The answer is 10.", "10"),
        ("10, then 11", "10"),
        ("about 10%", "10"),
        ("$7 each", "7"),
        ("(8)", "8"),
        ("between 5-10 of them", "10"),  # a range's hyphen is no minus sign
        ("It was -10 outside.", "-10"),
        ("It was \u221210 outside.", "-10"),  # the minus sign is read as a hyphen-minus
        ("It was -10 outside.", "\u221210"),
        ("pi is 3.14 or so", "3.14"),
        ("1,000 people", "1,000"),
        ("A week has 7\n days.", "7 days"),
        # words and punctuation
        ("Paris.", "Paris"),
        ("(Paris)", "Paris"),
        ("Paris's museums", "Paris"),
        ("Paris\u2019s museums", "Paris"),
        ('"Paris"', "Paris"),
        ("Paris-based", "Paris"),
        ("the capital is PARIS", "paris"),
        ("it is blue!", "Blue"),
        # phrases, any whitespace between the words
        ("mostly carbon dioxide", "carbon dioxide"),
        ("mostly carbon\n  dioxide.", "carbon dioxide"),
        ("mostly Carbon\tDioxide", "carbon dioxide"),
        # letters beyond ASCII, and their forms
        ("Z\u00fcrich.", "Z\u00fcrich"),
        ("Zu\u0308rich", "Z\u00fcrich"),  # decomposed and composed u-umlaut
        ("\u00c9COLE", "\u00e9cole"),
        ("It is H\u2082O.", "H\u2082O"),
        ("It is h2o", "H2O"),
        ("\u6771\u4eac \u3067\u3059", "\u6771\u4eac"),
        ("C++ is a language", "C++"),
    ],
)
def test_mentions(answer: str, expected: str) -> None:
    assert mentions(answer, expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # a number is not part of another number
        ("Water freezes at -10 degrees.", "0"),
        ("Water freezes at -10 degrees.", "10"),  # the minus sign belongs to the number
        ("It was \u221210.", "10"),
        ("about 10 of them", "0"),
        ("about 10 of them", "1"),
        ("0.5 litres", "0"),
        ("0.5 litres", "5"),
        ("10.5 metres", "10"),
        ("1,000 people", "1"),
        ("1,000 people", "000"),
        ("the 7th day", "7"),
        ("between 5-10 of them", "-10"),
        ("It is 10 outside.", "-10"),
        ("80", "8"),
        # a word is not part of another word
        ("a Parisian cafe", "Paris"),
        ("Romeo and Juliet", "Rome"),
        ("seventeen", "seven"),
        ("Marsupial", "Mars"),
        ("Z\u00fcrichsee", "Z\u00fcrich"),
        ("H2Os", "H2O"),
        ("the word carbondioxide", "carbon dioxide"),
        ("carbon monoxide", "carbon dioxide"),
        # nothing to look for
        ("anything", ""),
        ("anything", "   "),
    ],
)
def test_does_not_mention(answer: str, expected: str) -> None:
    assert not mentions(answer, expected)


def test_words_keep_numbers_whole() -> None:
    text = "At -10, not 3.5 or 5-10; 1,000 of H\u2082O. Veloria's end \u221204"
    assert words(text) == [
        "at",
        "-10",
        "not",
        "3.5",
        "or",
        "5",
        "10",
        "1,000",
        "of",
        "h\u2082o",
        "veloria's",
        "end",
        "-04",
    ]


def test_retention_counts_an_answer_only_when_it_mentions_the_expected_word() -> None:
    freezing = RegressionItem("At what temperature does water freeze?", ("0", "zero"), "0")
    assert freezing.answered_by("At 0 degrees Celsius.")
    assert freezing.answered_by("At zero degrees.")
    assert not freezing.answered_by("At -10 degrees.")
    assert not freezing.answered_by("At 10 degrees.")
    capital = RegressionItem("What is the capital of France?", ("Paris",), "Paris")
    assert capital.answered_by("The capital of France is Paris.")
    assert not capital.answered_by("A Parisian would know.")
