"""Training examples from an imported document's chunks (selftune.imports.examples): question
and answer pairs whose answers are the document's own sentences, and continuations of chunks."""

from __future__ import annotations

from selftune.imports import parse_document
from selftune.imports.chunks import ChunkSettings
from selftune.imports.examples import (
    DocumentExample,
    ExampleKind,
    examples_from_chunks,
    sentences,
)

TEXT = (
    "The lighthouse on Tarn Island is kept by Mirelle Dastor. "
    "Mirelle Dastor has kept it since 1987. "
    "Ferries leave the harbour twice a day.\n\n"
    "Ok.\n\n"
    "The island's only school was founded by Ilse Varga in 1921."
)


def _examples(kinds: tuple[ExampleKind, ...], chunk_chars: int = 1200) -> list[DocumentExample]:
    result = parse_document(
        TEXT.encode(), "tarn.txt", chunking=ChunkSettings(target_chars=chunk_chars, overlap_chars=0)
    )
    return examples_from_chunks(result.chunks, "Tarn Island", kinds)


def test_sentences_that_state_something_are_found_whole() -> None:
    found = list(sentences(TEXT))
    assert found[0] == "The lighthouse on Tarn Island is kept by Mirelle Dastor."
    assert "Ok." not in found  # too short to ask about
    assert len(found) == 4


def test_every_answer_is_a_sentence_of_the_document_and_questions_name_it() -> None:
    made = _examples(("qa",))
    assert made and {e.kind for e in made} == {"qa"}
    document_sentences = set(sentences(TEXT))
    for example in made:
        question, answer = example.messages
        assert (question["role"], answer["role"]) == ("user", "assistant")
        assert answer["content"] in document_sentences
    questions = [e.messages[0]["content"] for e in made]
    assert "What does “Tarn Island” say about the lighthouse on Tarn Island?" in questions
    assert "Who is the lighthouse on Tarn Island kept by?" in questions  # turned round
    assert any("who or what was founded by Ilse Varga in 1921" in q for q in questions)
    # every sentence is asked about, each several ways
    assert {e.messages[1]["content"] for e in made} == document_sentences


def test_continuations_carry_each_chunk_and_name_where_it_is_from() -> None:
    made = _examples(("continuation",), chunk_chars=120)
    assert len(made) >= 2 and {e.kind for e in made} == {"continuation"}
    first = made[0]
    assert first.chunk == 0
    assert first.messages[0]["content"].startswith("Continue this passage from “Tarn Island”:")
    assert "Mirelle Dastor has kept it since 1987." in first.messages[1]["content"]
    assert [e.chunk for e in made] == sorted(e.chunk for e in made)


def test_the_kinds_asked_for_are_made_and_no_others() -> None:
    both = _examples(("qa", "continuation"))
    assert {e.kind for e in both} == {"qa", "continuation"}
    assert _examples(()) == []
