from __future__ import annotations

from selftune.evaluation.recall import answer_recall, key_terms


def test_key_terms_leave_out_the_question_and_function_words() -> None:
    terms = key_terms("Veloria's capital is Quenmoor.", ["Tell me the capital of Veloria."])
    assert terms == {"quenmoor"}
    assert key_terms("Veloria\u2019s capital is Quenmoor.", ["capital of Veloria"]) == {"quenmoor"}


def test_recall_is_the_share_of_terms_found() -> None:
    terms = key_terms("It opens at nine and closes at five.", ["When is the shop open?"])
    assert terms == {"opens", "nine", "closes", "five"}
    assert answer_recall("The shop opens at nine.", terms) == 0.5
    assert answer_recall("QUENMOOR!", {"quenmoor"}) == 1.0
    assert answer_recall("anything", set()) is None


def test_numbers_are_whole_terms() -> None:
    """A negative number is not its positive, and a decimal is not its digits."""
    terms = key_terms("It freezes at -10 degrees.", ["When does it freeze?"])
    assert terms == {"freezes", "-10", "degrees"}
    assert answer_recall("It freezes at 10 degrees.", {"-10"}) == 0.0
    assert answer_recall("It freezes at \u221210.", {"-10"}) == 1.0
    assert answer_recall("It costs 3.5 euros.", {"3", "5"}) == 0.0
    assert answer_recall("It costs 3.5.", {"3.5"}) == 1.0
    assert answer_recall("Pages 5-10.", {"10"}) == 1.0
