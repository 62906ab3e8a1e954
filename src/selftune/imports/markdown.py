"""The Markdown structure that imports use: ATX headings (``# Title``) outside code fences.

Markdown and HTML documents (whose text trafilatura gives as Markdown) take their title from the
first heading and their chunks' heading paths from all of them. Setext headings (a line
underlined with ``===``) are not read: plain text uses such lines as rules too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

__all__ = ["Heading", "headings"]

# One pass over the lines that matter: fence lines (``` or ~~~, with any info string) and ATX
# headings. Every pattern here is linear in the line's length: no nested or lazy repeats.
_LINE = re.compile(
    r"^(?:[ \t]{0,3}(?P<fence>```|~~~).*|(?P<hashes>#{1,6})[ \t]+(?P<title>\S.*))$", re.M
)


@dataclasses.dataclass(frozen=True)
class Heading:
    """A heading: where its line starts in the text, its level (1 for ``#``) and its title."""

    start: int
    level: int
    title: str


def _title(raw: str) -> str:
    """A heading's title without its optional closing ``#`` run (``## Install ##``); a ``#``
    that ends a word (``C#``) stays."""
    title = raw.rstrip()
    stripped = title.rstrip("#")
    if stripped != title and (not stripped or stripped[-1] in " \t"):
        title = stripped.rstrip()
    return title


def headings(text: str) -> Iterator[Heading]:
    """The ATX headings of ``text`` in order, skipping lines inside fenced code blocks (where
    ``# comment`` is code). An unclosed fence runs to the end of the text."""
    fence: str | None = None  # the marker of the open fence, if any
    for line in _LINE.finditer(text):
        marker = line["fence"]
        if marker is not None:
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
        elif fence is None:
            title = _title(line["title"])
            if title:
                yield Heading(line.start(), len(line["hashes"]), title)
