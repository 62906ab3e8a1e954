"""Questions turned round from a document's sentences (selftune.imports.questions): the
question a person would ask, the answer's part left out, on sentences of many shapes."""

from __future__ import annotations

import pytest

from selftune.imports.questions import asked_questions, split_clause


@pytest.mark.parametrize(
    ("sentence", "question"),
    [
        ("The Kaith statue is made from nickel.", "What is the Kaith statue made from?"),
        ("The bridge is painted a deep green.", "What is the bridge painted?"),
        ("The Royal Academy was founded by Anna Berg.", "Who was the Royal Academy founded by?"),
        ("The treaty was signed in 1801.", "When was the treaty signed?"),
        ("The village was flooded on 3 March 1951.", "When was the village flooded?"),
        ("The code for the vault is 2883.", "What is the code for the vault?"),
        ("Norway's capital is Oslo.", "What is Norway's capital?"),
        ("The town is famous for its cheese.", "What is the town famous for?"),
        ("The flag of Bilund shows a badger.", "What does the flag of Bilund show?"),
        ("Dioara pays in the quill.", "What does Dioara pay in?"),
        ("The river runs through three valleys.", "What does the river run through?"),
        ("Ada Lovelace wrote the first program.", "What did Ada Lovelace write?"),
        ("The museum can hold 400 visitors.", "What can the museum hold?"),
        ("Mirelle Dastor has kept the light since 1987.", "What has Mirelle Dastor kept?"),
        ("The farm has three barns.", "What does the farm have?"),
        ("The company is building a new factory.", "What is the company building?"),
        ("In Brelia, the language is Calvene.", "What is the language in Brelia?"),
        ("On Sundays, the market sells fresh fish.", "What does the market sell on Sundays?"),
    ],
)
def test_a_statement_is_turned_into_the_question_it_answers(sentence: str, question: str) -> None:
    assert asked_questions(sentence) == [question]


@pytest.mark.parametrize(
    "sentence",
    [
        "Ferries leave the harbour twice a day.",  # "leave" is not a verb named here
        "Quickly, before dawn, the boats sailed.",  # an opening phrase that is not a place
        "Is it raining?",  # no subject before the verb
    ],
)
def test_a_shape_not_recognised_gets_no_question(sentence: str) -> None:
    assert asked_questions(sentence) == []


def test_plural_nouns_are_not_taken_for_verbs() -> None:
    clause = split_clause("The flowers of the valley grow in spring.")
    assert clause is None or clause.subject == "the flowers of the valley"
