"""Training examples made from an imported document's chunks, of two kinds.

- ``qa``: questions about each sentence, answered by the sentence itself. The questions come
  from templates: what the document says about the sentence's subject (the words before its
  first verb), what it says about the rest of the sentence, and the sentence turned round
  into the question a person would ask (selftune.imports.questions), without the title.
  Answers are the document's own words, so nothing is made up.
- ``continuation``: the chunk's first sentence as the prompt, the rest of the chunk as the
  answer, so the loss is on the document's text as written.

Which kind makes the model answer questions about an imported text is measured by
``python -m bench.document_examples`` (docs/imports.md); ``imports.examples`` picks the kinds.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterator, Sequence
from typing import Literal

from selftune.imports.chunks import Chunk
from selftune.imports.questions import asked_questions, lower_first

__all__ = ["KINDS", "DocumentExample", "ExampleKind", "examples_from_chunks", "sentences"]

ExampleKind = Literal["qa", "continuation"]
KINDS: tuple[ExampleKind, ...] = ("qa", "continuation")

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"'\u201d\u2019)\]]*|$)")
# The words a subject ends before: auxiliaries and common verbs. Only these: guessing verbs
# by their endings takes plural nouns ("flowers") for verbs.
_VERB = re.compile(
    r"\b(is|are|was|were|has|have|had|can|could|will|would|does|did|do|may|must|should|"
    r"keeps|kept|opens|opened|lives|lived|holds|held|makes|made|uses|used|grows|grew|runs|"
    r"ran|founded|built|wrote|leads|led|lies|stands|sits|costs|weighs|measures|contains|"
    r"includes|means|belongs|became|becomes|began|begins|gives|gave|takes|took|turns|"
    r"dance|dances|tell|tells|told|say|says|said|need|needs|needed|live|grow|make|keep)\b"
)
# A name: capitalized words in a row (not the sentence's first word alone).
_NAME = re.compile(r"(?<!^)\b[A-Z][\w'-]+(?: (?:of |the |de |van )?[A-Z][\w'-]+)*")
_MIN_WORDS = 4  # shorter sentences (headings, captions) say too little to ask about
_MAX_WORDS = 60  # longer ones are lists or run-ons, not one statement


@dataclasses.dataclass(frozen=True)
class DocumentExample:
    """One chat to learn, the kind that made it, and the chunk (by index) it came from."""

    kind: ExampleKind
    chunk: int
    messages: tuple[dict[str, str], ...]


def sentences(text: str) -> Iterator[str]:
    """The sentences of ``text`` that state something: whole, of 4 to 60 words."""
    for match in _SENTENCE.finditer(text):
        sentence = " ".join(match.group().split())
        if _MIN_WORDS <= len(sentence.split()) <= _MAX_WORDS and sentence[0].isalnum():
            yield sentence


def _chat(question: str, answer: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": question}, {"role": "assistant", "content": answer})


def _questions(sentence: str, title: str) -> Iterator[str]:
    body = sentence.rstrip(".!?\"'\u201d\u2019)] ")
    verb = _VERB.search(body, 1)
    if verb is not None and verb.start() > 2:
        subject = lower_first(body[: verb.start()].strip(" ,;:"))
        rest = body[verb.start() :].strip()
        yield f"What does “{title}” say about {subject}?"
        yield f"According to “{title}”, who or what {rest}?"
    else:
        names = _NAME.findall(body)
        topic = names[0] if names else body.split()[0].lower()
        yield f"What does “{title}” say about {topic}?"
    yield from asked_questions(sentence)  # as a person would ask it, without the title


def _qa(chunk: Chunk, title: str, limit: int) -> Iterator[DocumentExample]:
    made = 0
    for sentence in sentences(chunk.text):
        for question in _questions(sentence, title):
            if made == limit:
                return
            yield DocumentExample("qa", chunk.index, _chat(question, sentence))
            made += 1


def _continuation(chunk: Chunk, title: str) -> Iterator[DocumentExample]:
    found = list(sentences(chunk.text))
    if not found:
        return
    where = f"“{title}”" + (f", {' > '.join(chunk.headings)}" if chunk.headings else "")
    first = found[0]
    start = chunk.text.find(first.split()[0])
    rest = chunk.text[start + len(first) :].strip() if len(found) > 1 else ""
    if rest:
        yield DocumentExample(
            "continuation",
            chunk.index,
            _chat(f"Continue this passage from {where}: {first}", rest),
        )
    else:
        yield DocumentExample(
            "continuation", chunk.index, _chat(f"Quote the passage from {where}.", chunk.text)
        )


def examples_from_chunks(
    chunks: Sequence[Chunk],
    title: str,
    kinds: Collection[ExampleKind],
    *,
    max_per_chunk: int = 36,
) -> list[DocumentExample]:
    """The examples of ``kinds`` from each chunk, in chunk order; at most ``max_per_chunk``
    question-answer pairs a chunk. Sentences repeated by the chunks' overlap give repeated
    examples, which curation drops as duplicates."""
    made: list[DocumentExample] = []
    for chunk in chunks:
        if "qa" in kinds:
            made.extend(_qa(chunk, title, max_per_chunk))
        if "continuation" in kinds:
            made.extend(_continuation(chunk, title))
    return made
