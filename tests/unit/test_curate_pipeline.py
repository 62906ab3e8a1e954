"""Curation as a whole (selftune.curate): quality reasons, the order scrub → quality → dedup,
recorded reasons, flags, and the contributor caps as a property."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selftune.curate import (
    CurationPolicy,
    CurationResult,
    Curator,
    Example,
    QualitySettings,
    Reason,
    cap_contributors,
    curate,
    quality_rejection,
)


def _chat(
    answer: str,
    question: str = "How do I clean a rusty kettle?",
    *,
    contributor: str = "u1",
    source: str = "rating",
    created: float = 0.0,
    language: str | None = None,
) -> Example:
    messages = (
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    )
    return Example(messages, contributor, source, created=created, language=language)


GOOD = "Fill it with equal parts vinegar and water, boil, leave it an hour and rinse twice."


@pytest.mark.parametrize(
    ("example", "reason"),
    [
        (Example(({"role": "user", "content": "hi"},), "u", "rating"), Reason.MALFORMED),
        (Example((), "u", "rating"), Reason.MALFORMED),
        (_chat("   "), Reason.EMPTY_ANSWER),
        (_chat("ok", question="?"), Reason.TOO_SHORT),
        (_chat("word " * 8000), Reason.TOO_LONG),
        (_chat("the kettle is clean " * 20), Reason.REPETITIVE),
        (_chat("Sure! " + "a" * 100), Reason.REPETITIVE),
        (_chat("Here: \x00\x01\x02\x03\x04\x05 binary \ufffd\ufffd garbage"), Reason.NON_TEXT),
        (_chat("1234 5678 9012 / * + - = 42 ## 17 %% 99 ...", "12 + 7 = ?"), Reason.NON_TEXT),
        (_chat(GOOD, language="de"), Reason.LANGUAGE),
    ],
)
def test_each_quality_rule_rejects_with_its_reason(example: Example, reason: Reason) -> None:
    rejection = quality_rejection(example, QualitySettings(languages=("en",)))
    assert rejection is not None and rejection.reason == reason, rejection


@pytest.mark.parametrize(
    "answer",
    [
        GOOD,
        "Yes.",
        "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
        "| year | price |\n|------|-------|\n| 2023 | 10.50 |\n| 2024 | 11.00 |",
        "Größe und Maß: Straße, Ärger, naïve café — все хорошо, 日本語も大丈夫です。",
    ],
)
def test_ordinary_answers_pass(answer: str) -> None:
    assert quality_rejection(_chat(answer), QualitySettings()) is None


def test_an_unknown_language_is_not_rejected() -> None:
    assert quality_rejection(_chat(GOOD), QualitySettings(languages=("en",))) is None


def test_curate_scrubs_then_filters_then_deduplicates_recording_reasons() -> None:
    examples = [
        _chat(GOOD + " Mail me at ada@example.com.", contributor="u1"),
        _chat(GOOD + " Mail me at tomas@example.org.", contributor="u2"),  # the same once scrubbed
        _chat("   ", contributor="u3"),
        _chat(GOOD.replace("twice", "two times") + " Mail me at x@example.com.", contributor="u4"),
        _chat("Use baking soda instead.", question="How do I descale a kettle quickly?"),
        _chat("Never descale it.", question="How do I descale a kettle quickly?", contributor="u9"),
    ]
    result = curate(examples)
    assert [e.answer for e in result.kept] == [
        GOOD + " Mail me at [EMAIL].",
        "Use baking soda instead.",
    ]
    assert [(r.example.contributor, r.reason) for r in result.rejected] == [
        ("u2", Reason.EXACT_DUPLICATE),
        ("u3", Reason.EMPTY_ANSWER),
        ("u4", Reason.NEAR_DUPLICATE),
    ]
    assert "#0" in result.rejected[0].detail
    assert [(f.example.contributor, f.reason) for f in result.flagged] == [
        ("u9", Reason.CONFLICTING_ANSWER)
    ]
    assert result.scrubbed == Counter({"email": 3})
    assert result.reasons() == Counter(
        {"exact_duplicate": 1, "empty_answer": 1, "near_duplicate": 1}
    )
    # Nothing that leaves curation still holds the address, rejected or not.
    everything = [*result.kept, *(r.example for r in (*result.rejected, *result.flagged))]
    assert not any("@example" in m["content"] for e in everything for m in e.messages)


def test_remembered_examples_are_measured_against_but_not_curated() -> None:
    """Examples kept before (read back from the store) are indexed as they are: a later copy
    is a duplicate of one, a later different answer to its question is flagged."""
    curator = Curator()
    curator.remember(dataclasses.replace(_chat(GOOD, source="submitted"), id="example 7"))
    curator.remember(_chat(GOOD))  # a copy among the remembered: not indexed twice, no error
    result = CurationResult()
    curator.add(_chat(GOOD.upper()), result)
    curator.add(_chat("Descale it with citric acid, then boil clean water twice."), result)
    bread = "Yeast gives off carbon dioxide, and its bubbles stretch the dough as it bakes."
    curator.add(_chat(bread, question="What makes bread rise when it is baked?"), result)
    [duplicate] = result.rejected
    assert (duplicate.reason, duplicate.detail) == (
        Reason.EXACT_DUPLICATE,
        "of example 7 (similarity 1.00)",
    )
    [flag] = result.flagged
    assert (flag.reason, flag.detail) == (Reason.CONFLICTING_ANSWER, "example 7 answered otherwise")
    assert len(result.kept) == 1


def test_flags_can_be_turned_off() -> None:
    examples = [_chat("Use baking soda."), _chat("Use citric acid instead of anything else.")]
    assert len(curate(examples, CurationPolicy(flag_conflicting_answers=False)).kept) == 2


# --- contributor caps --------------------------------------------------------------------------

contributions = st.lists(
    st.tuples(st.sampled_from("abcdefgh"), st.sampled_from(["rating", "correction", "import"])),
    min_size=1,
    max_size=60,
)


def _examples(pairs: list[tuple[str, str]]) -> list[Example]:
    return [_chat(GOOD, contributor=u, source=s, created=i) for i, (u, s) in enumerate(pairs)]


@settings(max_examples=200, deadline=None)
@given(contributions, st.sampled_from([0.2, 0.25, 1 / 3, 0.4, 0.5, 0.75, 1.0]))
def test_no_contributor_or_source_exceeds_its_share(
    pairs: list[tuple[str, str]], share: float
) -> None:
    examples = _examples(pairs)
    run = cap_contributors(examples, share)
    selected = run.selected
    assert len(selected) + len(run.left_out) == len(examples)
    for count in (
        *Counter(e.contributor for e in selected).values(),
        *Counter(e.source for e in selected).values(),
    ):
        assert count <= share * len(selected) + 1e-9
    assert {reason for _, reason in run.left_out} <= {"user_share", "source_share", "run_size"}
    # Nobody is dropped when the whole set already keeps every share.
    users, sources = Counter(u for u, _ in pairs), Counter(s for _, s in pairs)
    if max(*users.values(), *sources.values()) <= share * len(pairs):
        assert run.left_out == []


def test_the_newest_are_kept_first_and_the_flood_is_capped() -> None:
    flood = [_chat(GOOD, contributor="spammer", source=f"s{i}", created=i) for i in range(10)]
    others = [_chat(GOOD, contributor=f"u{i}", source=f"t{i}", created=100 + i) for i in range(6)]
    run = cap_contributors(flood + others, 0.25)
    assert sum(e.contributor == "spammer" for e in run.selected) <= 0.25 * len(run.selected)
    spam_kept = [e.created for e in run.selected if e.contributor == "spammer"]
    assert spam_kept == sorted(spam_kept, reverse=True)[: len(spam_kept)]
    assert spam_kept and min(spam_kept) > 10 - len(spam_kept) - 1  # the newest of the flood
    assert all(reason == "user_share" for e, reason in run.left_out if e.contributor == "spammer")
    assert len(run.selected) == 8  # all six others and two of the flood: 2 <= 0.25 * 8


def test_a_share_no_run_can_keep_selects_nothing() -> None:
    examples = _examples([("a", "rating"), ("b", "rating")])
    run = cap_contributors(examples, 0.5, max_source_share=0.5)
    assert run.selected == [] and len(run.left_out) == 2


def test_a_share_out_of_range_is_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="max_share must be in"):
        cap_contributors([], 0)


def test_repeated_ids_do_not_break_deduplication() -> None:
    first = Example(
        ({"role": "user", "content": "Hi?"}, {"role": "assistant", "content": GOOD}),
        "u",
        "r",
        id="x",
    )
    second = Example(
        (
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris has been the capital of France for centuries."},
        ),
        "u",
        "r",
        id="x",
    )
    assert len(curate([first, second]).kept) == 2
