"""Neighbour prompts: the taught question's shape about other subjects (data.neighbours)."""

from __future__ import annotations

import pytest

from bench.editing_facts import GENERAL, SHAPES, facts
from selftune.data.neighbours import SUBJECTS, neighbour_questions, subject_span


@pytest.mark.parametrize(
    ("question", "subject"),
    [
        ("What is the capital of Veloria?", "Veloria"),
        ("What colour is the Harrowgate Bridge painted?", "the Harrowgate Bridge"),
        ("In what year was the Treaty of Vellmor signed?", "the Treaty of Vellmor"),
        ("Veloria's capital?", "Veloria"),
        ("Who founded Orvane Labs in Quenmoor Heights?", "Quenmoor Heights"),
        ("Tell me who painted it.", None),
        ("what is my name?", None),
    ],
)
def test_the_subject_is_the_longest_run_of_capitalised_words(
    question: str, subject: str | None
) -> None:
    span = subject_span(question)
    assert (question[span[0] : span[1]] if span else None) == subject


def test_neighbours_keep_the_shape_and_change_the_subject() -> None:
    made = neighbour_questions("What colour is the Harrowgate Bridge painted?", 4)
    assert len(made) == len(set(made)) == 4
    for question in made:
        assert question.startswith("What colour is ") and "Harrowgate" not in question
    assert [q.endswith(" painted?") for q in made] == [True, False, True, False]
    assert made == neighbour_questions("What colour is the Harrowgate Bridge painted?", 4)
    assert neighbour_questions("Veloria's capital?", 2)[0][0].isupper()
    assert neighbour_questions("how are you?", 4) == []


def test_no_subject_of_the_recipe_is_in_the_benchmarks_held_back_questions() -> None:
    """The knowledge-editing benchmark's neighbours, paraphrases and general questions judge
    the recipe; a subject the recipe holds must not be one of theirs."""
    held_back = [q for shape in SHAPES for q, _ in shape.neighbours] + [q for q, _ in GENERAL]
    held_back += [p for fact in facts() for p in fact.paraphrases]
    for subject in SUBJECTS:
        name = subject.removeprefix("the ").lower()
        assert not [q for q in held_back if name in q.lower()], subject
