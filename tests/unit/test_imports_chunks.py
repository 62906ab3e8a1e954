"""Chunking (selftune.imports.chunks): chunks cover the text in order, keep to the size, overlap
as set from a word start, never split a word, carry offsets and heading paths, and are the same
every time."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from selftune.imports import Chunk, ChunkSettings, Document, chunk_document
from selftune.imports.markdown import headings

WORDS = ["the", "garden", "heap", "turns", "kitchen", "scraps", "into", "dark", "soil", "love"]


def _prose(seed: int, paragraphs: int) -> str:
    """Paragraphs of sentences of random lengths, some far longer than a chunk."""
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))).capitalize() + "."
            for _ in range(rng.randint(1, 12))
        ]
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def _check(document: Document, chunks: list[Chunk], settings: ChunkSettings) -> None:
    text = document.text
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    covered = [False] * len(text)
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert len(chunk.text) <= settings.target_chars
        assert chunk.text == chunk.text.strip()
        # no word is cut: the characters either side of a chunk are not word characters
        assert chunk.start == 0 or text[chunk.start - 1].isspace()
        assert chunk.end == len(text) or text[chunk.end].isspace()
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    assert all(covered[i] for i, char in enumerate(text) if not char.isspace())
    for before, after in itertools.pairwise(chunks):
        assert before.start < after.start and before.end < after.end  # in document order
        if after.start < before.end:  # an overlap repeats at most about overlap_chars
            assert before.end - after.start <= settings.overlap_chars


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("target", "overlap"), [(200, 40), (500, 0), (80, 40)])
def test_chunks_cover_the_text_in_order_within_the_size(
    seed: int, target: int, overlap: int
) -> None:
    document = Document("t", _prose(seed, 8), "text")
    settings = ChunkSettings(target_chars=target, overlap_chars=overlap)
    chunks = chunk_document(document, settings)
    _check(document, chunks, settings)
    overlapping = [b.start < a.end for a, b in itertools.pairwise(chunks)]
    assert any(overlapping) if overlap else not any(overlapping)


def test_paragraphs_are_packed_whole_when_they_fit() -> None:
    paragraphs = ["Alpha one two three.", "Beta four five six.", "Gamma seven eight nine."]
    document = Document("t", "\n\n".join(paragraphs), "text")
    chunks = chunk_document(document, ChunkSettings(target_chars=50, overlap_chars=10))
    assert [chunk.text for chunk in chunks] == [
        "Alpha one two three.\n\nBeta four five six.",
        "five six.\n\nGamma seven eight nine.",  # from the first word start in the overlap
    ]
    assert (chunks[1].start, chunks[1].end) == (32, 66)


def test_a_long_sentence_is_split_between_words() -> None:
    sentence = " ".join(["extraordinarily"] * 30) + "."
    document = Document("t", sentence, "text")
    settings = ChunkSettings(target_chars=60, overlap_chars=16)
    chunks = chunk_document(document, settings)
    _check(document, chunks, settings)
    assert all(re.fullmatch(r"extraordinarily( extraordinarily)*\.?", c.text) for c in chunks)


def test_a_word_longer_than_a_chunk_stands_alone() -> None:
    url = "https://example.com/" + "x" * 100
    document = Document("t", f"See {url} for more.", "text")
    chunks = chunk_document(document, ChunkSettings(target_chars=50, overlap_chars=0))
    assert [chunk.text for chunk in chunks] == ["See", url, "for more."]


MARKDOWN = """Preface before any heading.

# Guide

Intro to the guide.

## Install

Run the installer.

```sh
# not a heading: a comment in a code block
make install
```

### On Linux

Use the package.

## Use

Start it.

# Appendix

The end.
"""


def test_markdown_chunks_carry_their_heading_path_and_never_cross_a_heading() -> None:
    document = Document("Guide", MARKDOWN.strip(), "markdown")
    chunks = chunk_document(document, ChunkSettings(target_chars=1000, overlap_chars=50))
    assert [(chunk.headings, chunk.text.split("\n")[0]) for chunk in chunks] == [
        ((), "Preface before any heading."),
        (("Guide",), "# Guide"),
        (("Guide", "Install"), "## Install"),
        (("Guide", "Install", "On Linux"), "### On Linux"),
        (("Guide", "Use"), "## Use"),
        (("Appendix",), "# Appendix"),
    ]
    assert "make install" in chunks[2].text  # the code block stays in its section


def test_html_documents_are_chunked_by_their_markdown_headings() -> None:
    document = Document("t", "# Title\n\nText.\n\n## Part\n\nMore.", "html")
    assert [chunk.headings for chunk in chunk_document(document)] == [
        ("Title",),
        ("Title", "Part"),
    ]


def test_plain_text_has_no_headings() -> None:
    document = Document("t", "# not a heading in plain text\n\nText.", "text")
    assert [chunk.headings for chunk in chunk_document(document)] == [()]


def test_chunking_is_deterministic() -> None:
    document = Document("t", _prose(7, 20), "text")
    settings = ChunkSettings(target_chars=300, overlap_chars=60)
    assert chunk_document(document, settings) == chunk_document(document, settings)


@pytest.mark.parametrize(
    ("target", "overlap", "message"),
    [(10, 0, "target_chars must be at least 50"), (100, 60, "overlap_chars must be between")],
)
def test_settings_are_validated(target: int, overlap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkSettings(target_chars=target, overlap_chars=overlap)


@pytest.mark.parametrize(
    ("line", "title"),
    [
        ("## Install ##", "Install"),
        ("# Learning C#", "Learning C#"),
        ("### Spaced   ", "Spaced"),
        ("#Tag", None),  # no space: a hashtag, not a heading
        ("####### Seven", None),
    ],
)
def test_heading_titles(line: str, title: str | None) -> None:
    found = [heading.title for heading in headings(f"{line}\n\ntext\n")]
    assert found == ([title] if title else [])


def test_headings_inside_fences_are_code() -> None:
    text = "# One\n~~~\n# code\n```\n# still code\n~~~\n## Two\n```\n# unclosed fence"
    assert [(h.level, h.title) for h in headings(text)] == [(1, "One"), (2, "Two")]
