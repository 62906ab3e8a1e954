"""Exact and near duplicates are found, each naming the earlier text it repeats, and different
texts are not (selftune.curate.dedup)."""

from __future__ import annotations

import random

import pytest

from selftune.curate import Deduplicator, DedupSettings, normalize


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


WORDS = _words(
    "garden kettle bicycle invoice lantern violin harbour recipe compiler tent novel bridge "
    "printer orchard meeting battery kitchen telescope ledger canoe museum sweater router "
    "festival pillow backpack scanner greenhouse piano tractor library bakery ferry quiet "
    "rusty bright narrow ancient fragile heavy tidy repair paint borrow clean measure move "
    "label sell"
)


def _text(rng: random.Random, words: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def test_normalize_folds_case_unicode_punctuation_and_spacing() -> None:
    assert normalize("  Hello,\tWORLD!!  ﬁne\u00a0day ") == "hello world fine day"
    assert normalize("Email: [EMAIL].") == "email email"


def test_the_first_is_kept_and_a_copy_names_it() -> None:
    dedup = Deduplicator()
    assert dedup.check("a", "How do I repair a rusty kettle? Clean it with vinegar.") is None
    found = dedup.check("b", "how do i repair a RUSTY kettle clean it with vinegar!!")
    assert found is not None and found.exact and found.of == "a"


@pytest.mark.parametrize("edit", ["replace", "insert", "delete", "reorder", "case"])
def test_near_copies_are_found(edit: str) -> None:
    rng = random.Random(edit)  # a str seed is stable across runs, unlike hash()
    for trial in range(10):
        dedup = Deduplicator()
        sentences = [_text(rng, 10) for _ in range(4)]
        original = " ".join(sentences)
        words = original.split()
        position = rng.randrange(len(words))
        if edit == "replace":
            words[position] = "zeppelin"
        elif edit == "insert":
            words.insert(position, "really")
        elif edit == "delete":
            del words[position]
        elif edit == "reorder":
            words = " ".join([sentences[1], sentences[0], *sentences[2:]]).split()
        else:
            words = [w.upper() for w in words[:5]] + words[5:] + ["indeed"]
        assert dedup.check("original", original) is None
        found = dedup.check("copy", " ".join(words))
        assert found is not None and found.of == "original", (edit, trial)


def test_different_texts_are_not_duplicates() -> None:
    rng = random.Random(5)
    dedup = Deduplicator()
    for index in range(200):
        assert dedup.check(str(index), _text(rng)) is None
    assert len(dedup) == 200


def test_texts_sharing_a_phrase_but_not_their_substance_are_kept() -> None:
    dedup = Deduplicator()
    assert dedup.check("a", "Thanks for asking! The capital of France is Paris.") is None
    assert dedup.check("b", "Thanks for asking! Water boils at 100 degrees at sea level.") is None


def test_settings_are_validated_with_a_message() -> None:
    with pytest.raises(ValueError, match="threshold"):
        DedupSettings(threshold=0)
    with pytest.raises(ValueError, match="shingle_size"):
        DedupSettings(shingle_size=0)
